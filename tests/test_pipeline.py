"""The KFP pipeline: compiled YAML contents, and whole local runs through kfp.local."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipelines.compile import compile_pipeline
from pipelines.run_local import run_local

TINY_SYNTH = [
    "--vocab",
    "3",
    "--per-word",
    "12",
    "--sessions",
    "3",
    "--train-sessions",
    "1",
    "--duration",
    "0.5",
    "0.8",
    "--seed",
    "3",
]
TINY_MODEL = [
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "training.batch_size=8",
    "training.num_workers=0",
    "training.viz_interval=50",
]


SECRET_VALUES = {
    "AWS_SECRET_ACCESS_KEY": "s3-secret-value-4f1c",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password-9a2e",
    "WANDB_API_KEY": "wandb-key-77d0",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The pipeline compiled while credentials are in the environment (they must not leak)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in SECRET_VALUES.items():
            mp.setenv(key, value)
        path = compile_pipeline(
            tmp_path_factory.mktemp("kfp") / "ssr.yaml",
            image="registry.example.com/ssr:9.9.9",
            gpu_type="nvidia.com/gpu",
            gpus=2,
        )
    spec, platform = yaml.safe_load_all(path.read_text())  # pipeline spec, platform spec
    return {"path": path, "text": path.read_text(), "spec": spec, "platform": platform}


def _executor(spec: dict, name: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


def test_compiled_images_and_gpu_request(compiled):
    spec = compiled["spec"]
    for step in ("preprocess", "train", "evaluate", "register"):
        assert _executor(spec, step)["image"] == "registry.example.com/ssr:9.9.9"
    resources = _executor(spec, "train")["resources"]
    assert "pipelinechannel--gpu_type" in resources["accelerator"]["resourceType"]
    assert "pipelinechannel--gpu_count" in resources["accelerator"]["resourceCount"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_type"]["defaultValue"] == "nvidia.com/gpu"
    assert params["gpu_count"]["defaultValue"] == 2
    assert resources["resourceCpuRequest"] == "4" and resources["resourceMemoryLimit"] == "32Gi"


def test_compiled_retries_checkpoints_and_gate(compiled):
    tasks = compiled["spec"]["root"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 3
    ckpt = tasks["train"]["inputs"]["parameters"]["checkpoint_dir"]["runtimeValue"]["constant"]
    assert "checkpoint_root" in ckpt and "{{$.pipeline_job_uuid}}" in ckpt
    gate = tasks["condition-1"]
    assert "min_accuracy" in gate["triggerPolicy"]["condition"]
    assert "register" in compiled["spec"]["components"]["comp-condition-1"]["dag"]["tasks"]


def test_compiled_secrets_as_env_and_no_credentials(compiled):
    k8s = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train_secrets = {s["secretName"]: s for s in k8s["exec-train"]["secretAsEnv"]}
    assert set(train_secrets) == {
        "ssr-s3-credentials",
        "ssr-mlflow-credentials",
        "ssr-wandb-credentials",
    }
    envs = {e["envVar"] for s in train_secrets.values() for e in s["keyToEnv"]}
    assert {"AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "WANDB_API_KEY"} <= envs
    assert "exec-register" in k8s and "exec-preprocess" in k8s
    text = compiled["text"]
    # Secrets only by reference: no literal values, no env with credentials in the YAML.
    for container in compiled["spec"]["deploymentSpec"]["executors"].values():
        for env in container["container"].get("env", []):
            assert not any(w in env["name"] for w in ("SECRET", "PASSWORD", "API_KEY"))
    for value in SECRET_VALUES.values():
        assert value not in text


def _versions(uri: str, name: str) -> list:
    return MlflowClient(uri).search_model_versions(f"name='{name}'")


def _run(tmp_path: Path, name: str, min_accuracy: float, pipeline_yaml: Path | None = None):
    return run_local(
        tmp_path / "run",
        epochs=2,
        synth_args=TINY_SYNTH,
        overrides=TINY_MODEL,
        pipeline_yaml=pipeline_yaml,
        min_accuracy=min_accuracy,
        model_name=name,
    )


@pytest.fixture
def tracking_env(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    return mlflow_server


def test_local_run_from_python_registers_a_version(tracking_env, tmp_path):
    name = f"ssr-py-{uuid.uuid4().hex[:6]}"
    summary = _run(tmp_path, name, min_accuracy=0.0)
    versions = _versions(tracking_env.uri, name)
    assert len(versions) == 1
    assert summary["registered_version"] == versions[0].version
    assert versions[0].tags["pipeline_run_id"]
    client = MlflowClient(tracking_env.uri)
    assert client.get_model_version_by_alias(name, "champion").version == versions[0].version
    metrics = json.loads(Path(summary["metrics"]).read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and summary["plots"]


def test_local_run_from_compiled_yaml(compiled, tracking_env, tmp_path):
    name = f"ssr-yaml-{uuid.uuid4().hex[:6]}"
    summary = _run(tmp_path, name, min_accuracy=0.0, pipeline_yaml=compiled["path"])
    assert [v.version for v in _versions(tracking_env.uri, name)] == [summary["registered_version"]]


def test_failed_gate_registers_nothing(tracking_env, tmp_path):
    name = f"ssr-gate-{uuid.uuid4().hex[:6]}"
    summary = _run(tmp_path, name, min_accuracy=1.01)
    assert summary["registered_version"] is None
    assert _versions(tracking_env.uri, name) == []
    assert Path(summary["metrics"]).is_file()  # evaluation ran; only registration was skipped
