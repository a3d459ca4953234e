"""The pipeline steps as a cluster runs them (what kfp.local would hide): one checkpoint folder
per run, joined in the step from the root and the run id; a write check before training; resume
refusing a checkpoint of another run or other data; register idempotent per pipeline run."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from helpers_data import make_processed, tiny_overrides
from mlflow.tracking import MlflowClient

from ssr.config import Config, load_config
from ssr.errors import CheckpointError
from ssr.steps import (
    GATE_TAG,
    PROCESSED,
    RAW,
    StepError,
    check_writable,
    checkpoint_dir_for,
    register_step,
    train_step,
)
from ssr.storage import list_objects
from ssr.storage.pointer import CheckpointPublisher
from ssr.training.checkpoint import checkpoint_bytes, load_checkpoint, save_checkpoint
from ssr.training.job import resolve_resume

# ---------------------------------------------------------------------------- checkpoint folder


def test_checkpoint_dir_is_root_joined_with_the_run_id() -> None:
    root = "s3://mlpipeline/shared/ssr-checkpoints"
    assert checkpoint_dir_for(root, "5f0c-11") == f"{root}/5f0c-11"
    assert checkpoint_dir_for(root + "/", " 5f0c-11\n") == f"{root}/5f0c-11"
    assert checkpoint_dir_for("/data/ck", "r1") == "/data/ck/r1"
    # An unsubstituted placeholder (or none) would give every run the same folder.
    for bad in ("", "  ", "{{$.pipeline_job_uuid}}", "a/b"):
        with pytest.raises(StepError, match="not a pipeline run id"):
            checkpoint_dir_for(root, bad)
    with pytest.raises(StepError, match="checkpoint_root is empty"):
        checkpoint_dir_for(" ", "r1")


def test_write_check_local(tmp_path: Path) -> None:
    target = tmp_path / "ck" / "run-1"
    check_writable(str(target))
    assert list(target.iterdir()) == []  # the probe is removed again
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StepError, match=r"cannot write checkpoints to .*s3://mlpipeline/shared/"):
        check_writable(str(blocker / "run-1"))


@pytest.mark.slow
def test_write_check_s3_names_a_missing_bucket_at_once(s3_env) -> None:
    bucket = s3_env.create_bucket(f"ck-{uuid.uuid4().hex[:8]}")
    check_writable(f"s3://{bucket}/prefix/run-1")
    assert list_objects(f"s3://{bucket}/prefix") == []
    with pytest.raises(StepError, match="bucket does not exist"):
        check_writable(f"s3://no-such-{uuid.uuid4().hex[:8]}/prefix/run-1")


# ----------------------------------------------------------------------------- resume identity


def _cfg(processed: Path, work: Path, run_id: str | None) -> Config:
    extra = [] if run_id is None else [f"training.run_id={json.dumps(run_id)}"]
    return load_config(None, [*tiny_overrides(processed, work), *extra])


def _state(cfg: Config, fingerprint: str) -> dict:
    return {"model": {}, "config": cfg.model_dump(), "labels": [], "data_fingerprint": fingerprint}


def _fingerprint(processed: Path) -> str:
    return json.loads((processed / "manifest.json").read_text())["fingerprint"]


def test_resume_refuses_another_runs_checkpoint(processed: Path, tmp_path: Path) -> None:
    theirs = _cfg(processed, tmp_path, "run-a")
    path = save_checkpoint(_state(theirs, _fingerprint(processed)), str(tmp_path), "a.pth")
    state, source = resolve_resume(_cfg(processed, tmp_path, "run-a"), path)
    assert source == path and state["config"]["training"]["run_id"] == "run-a"
    with pytest.raises(CheckpointError) as err:
        resolve_resume(_cfg(processed, tmp_path, "run-b"), path)
    assert path in str(err.value) and "'run-a'" in str(err.value) and "'run-b'" in str(err.value)
    # Without a run id (plain `ssr train --resume`), only the data is compared.
    assert resolve_resume(_cfg(processed, tmp_path, None), path)[1] == path
    # A checkpoint written before run ids existed does not belong to any pipeline run.
    legacy = _state(theirs, _fingerprint(processed))
    del legacy["config"]["training"]["run_id"]
    old = save_checkpoint(legacy, str(tmp_path), "old.pth")
    with pytest.raises(CheckpointError, match="belongs to run None"):
        resolve_resume(_cfg(processed, tmp_path, "run-b"), old)


def test_resume_auto_refuses_a_checkpoint_of_other_data(processed: Path, tmp_path: Path) -> None:
    cfg = _cfg(processed, tmp_path, "run-a")
    folder = cfg.training.checkpoint_dir
    publisher = CheckpointPublisher(folder)
    publisher.publish(checkpoint_bytes(_state(cfg, "0123456789abcdef")), epoch=1, global_step=4)
    with pytest.raises(CheckpointError) as err:
        resolve_resume(cfg, "auto")
    text = str(err.value)
    assert folder in text and "0123456789abcdef" in text and _fingerprint(processed) in text


# -------------------------------------------------------------------------- train step, end to end


@pytest.mark.slow
def test_train_step_per_run_folder_and_refusal(tmp_path: Path, one_thread, capsys) -> None:
    """One epoch in <root>/<run id> (an id of digits stays a string); a second run gets its own
    folder; the same run on other data refuses the checkpoint instead of resuming it."""
    artifact = tmp_path / "artifact"
    make_processed(artifact / PROCESSED)
    root = tmp_path / "checkpoints"
    overrides = [
        o
        for o in tiny_overrides(artifact / PROCESSED, tmp_path)
        if not o.startswith(("training.viz_interval", "training.num_epochs"))
    ] + ["training.viz_interval=50"]
    result = train_step(
        str(artifact), str(tmp_path / "m1.pth"), str(root), "60306745", "", overrides, 1
    )
    assert result["checkpoint_dir"] == str(root / "60306745")
    state = load_checkpoint(str(tmp_path / "m1.pth"))
    assert state["config"]["training"]["run_id"] == "60306745"
    assert not (root / "60306745" / ".ssr-write-probe").exists()

    other = tmp_path / "other"
    make_processed(other / PROCESSED, seed=1)
    with pytest.raises(StepError, match="exited with status 2"):
        train_step(str(other), str(tmp_path / "m2.pth"), str(root), "60306745", "", overrides, 1)
    assert "refusing to resume" in capsys.readouterr().err
    second = train_step(str(other), str(tmp_path / "m3.pth"), str(root), "run-2", "", overrides, 1)
    assert second["checkpoint_dir"] == str(root / "run-2")
    assert sorted(p.name for p in root.iterdir()) == ["60306745", "run-2"]


# ------------------------------------------------------------------ register, idempotent per run

TINY = [
    "model.input_size=8",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.max_frames=64",
    "model.dropout=0.0",
    "tracking.mlflow.experiment=pipeline-steps-tests",
    "registry.log_pytorch_model=false",
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A Dataset artifact folder (processed/ + raw/test/), a checkpoint and its evaluation."""
    from ssr.data.preprocess import run_preprocess
    from ssr.data.processed import ProcessedSplit
    from ssr.data.synth import SynthOptions, generate
    from ssr.evaluation import evaluate
    from ssr.model import build_model

    artifact = tmp_path_factory.mktemp("artifact")
    raw = artifact / RAW
    generate(
        raw,
        SynthOptions(
            vocab=3,
            per_word=8,
            sessions=4,
            train_sessions=2,
            test_sessions=1,
            min_duration=0.5,
            max_duration=0.8,
        ),
    )
    cfg = load_config(
        None,
        [
            *[f"data.{s}_dir={raw / s}" for s in ("train", "val", "test")],
            f"data.processed_dir={artifact / PROCESSED}",
            *TINY,
        ],
    )
    run_preprocess(cfg)
    labels = ProcessedSplit(cfg.data.processed_dir, "train").label_names
    torch.manual_seed(0)
    model = build_model(cfg.model, len(labels))
    state = {"model": model.state_dict(), "config": cfg.model_dump(), "labels": labels}
    checkpoint = save_checkpoint(state, str(artifact / "model"), "best_model.pth")
    report = artifact / "report"
    evaluate(checkpoint, "test", cfg.data.processed_dir, str(report), device="cpu")
    return {"artifact": str(artifact), "model": checkpoint, "report": str(report)}


def _register(evaluated: dict, run_id: str, name: str) -> dict:
    return register_step(
        evaluated["artifact"],
        evaluated["model"],
        evaluated["report"],
        run_id,
        "",
        TINY,
        name,
        min_accuracy=0.0,
        margin=0.0,
        p_value=0.05,
        baseline_margin=0.0,
    )


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in (client.get_registered_model(name).aliases or {}).items()}


@pytest.mark.slow
def test_register_step_is_idempotent_per_pipeline_run(
    evaluated: dict, mlflow_server, s3_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint)
    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    name = f"ssr-idem-{uuid.uuid4().hex[:8]}"
    run_id = str(uuid.uuid4())

    first = _register(evaluated, run_id, name)
    versions = client.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == [first["version"]]
    assert versions[0].tags["pipeline_run_id"] == run_id
    assert versions[0].tags[GATE_TAG] == first["action"]
    aliases = _aliases(client, name)
    runs = client.search_runs(
        [client.get_experiment_by_name("pipeline-steps-tests").experiment_id],
        filter_string=f"tags.pipeline_run_id = '{run_id}'",
    )

    # A retried task or a re-run of the same pipeline run: the same version, nothing moves.
    again = _register(evaluated, run_id, name)
    assert again["version"] == first["version"] and again["existing"] is True
    assert again["action"] == first["action"]
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == [first["version"]]
    assert _aliases(client, name) == aliases
    experiment = client.get_experiment_by_name("pipeline-steps-tests").experiment_id
    assert len(
        client.search_runs([experiment], filter_string=f"tags.pipeline_run_id = '{run_id}'")
    ) == len(runs)

    # Another pipeline run registers its own version.
    other = _register(evaluated, str(uuid.uuid4()), name)
    assert other["version"] != first["version"] and not other["existing"]
    assert len(client.search_model_versions(f"name='{name}'")) == 2


@pytest.mark.slow
def test_register_step_gates_a_version_whose_gate_never_ran(
    evaluated: dict, mlflow_server, s3_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt that registered the version died before the gate: the retry gates it."""
    from ssr.registry.register import register_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint)
    client = MlflowClient(mlflow_server.uri, mlflow_server.uri)
    name = f"ssr-half-{uuid.uuid4().hex[:8]}"
    run_id = str(uuid.uuid4())
    cfg = load_config(
        None,
        [
            *TINY,
            f"data.processed_dir={Path(evaluated['artifact']) / PROCESSED}",
            f"data.test_dir={Path(evaluated['artifact']) / RAW / 'test'}",
        ],
    )
    info = register_model(
        cfg, evaluated["model"], evaluated["report"], pipeline_run_id=run_id, model_name=name
    )
    assert GATE_TAG not in client.get_model_version(name, info.version).tags
    result = _register(evaluated, run_id, name)
    assert result["version"] == info.version and result["existing"] is True
    assert client.get_model_version(name, info.version).tags[GATE_TAG] == result["action"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1
