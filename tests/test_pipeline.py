"""The KFP pipeline: compiled YAML contents, and whole local runs through kfp.local."""

from __future__ import annotations

import json
import re
import shlex
import uuid
from pathlib import Path

import pytest
import yaml
from kfp import dsl
from mlflow.tracking import MlflowClient

from pipelines.compile import compile_pipeline, main
from pipelines.run_local import run_local
from ssr.steps import RUN_ID_PLACEHOLDER
from ssr.tuning.space import load_space, parse_space
from ssr.yaml_io import yaml_load

REPO = Path(__file__).resolve().parents[1]

STEPS = ("preprocess", "tune", "train", "evaluate", "register", "deploy")

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


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, those inside the accuracy gate's dsl.If included."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_compiled_images_train_on_the_cuda_image(compiled):
    spec = compiled["spec"]
    for step in ("preprocess", "evaluate", "register", "deploy"):
        assert _executor(spec, step)["image"] == "registry.example.com/ssr:9.9.9"
    # The train step runs in the CUDA variant (as make image-cuda tags it) unless told otherwise.
    assert _executor(spec, "train")["image"] == "registry.example.com/ssr:9.9.9-cuda"


def test_compiled_train_image_is_a_compile_time_option(tmp_path, monkeypatch):
    path = compile_pipeline(
        tmp_path / "a.yaml", image="reg.example.com/ssr:1", train_image="reg.example.com/gpu:2"
    )
    spec = next(yaml.safe_load_all(path.read_text()))
    assert _executor(spec, "train")["image"] == "reg.example.com/gpu:2"
    assert _executor(spec, "evaluate")["image"] == "reg.example.com/ssr:1"
    monkeypatch.setenv("SSR_TRAIN_IMAGE", "reg.example.com/from-env:3")  # what make exports
    path = compile_pipeline(tmp_path / "b.yaml", image="reg.example.com/ssr:1")
    spec = next(yaml.safe_load_all(path.read_text()))
    assert _executor(spec, "train")["image"] == "reg.example.com/from-env:3"
    assert _executor(spec, "preprocess")["image"] == "reg.example.com/ssr:1"


def _components_on_the_way(spec: dict, task: str) -> list[str]:
    """The DAG components from the root down to the one that holds ``task``."""
    comps = spec["components"]

    def walk(dag: dict, path: list[str]) -> list[str] | None:
        if task in dag["tasks"]:
            return path
        for t in dag["tasks"].values():
            name = t["componentRef"]["name"]
            if "dag" in comps[name]:
                found = walk(comps[name]["dag"], [*path, name])
                if found is not None:
                    return found
        return None

    return walk(spec["root"]["dag"], []) or []


def test_compiled_gpus_per_node_reaches_the_driver_as_a_string(compiled):
    """The driver resolves the accelerator count with GetStringValue(): a number gives "" and
    no nvidia.com/gpu limit. The count must be a STRING parameter from the root to the task,
    through every group around it (dsl.If, dsl.ExitHandler)."""
    spec = compiled["spec"]
    resources = _executor(spec, "train")["resources"]
    channel = "pipelinechannel--gpus_per_node"
    assert resources["accelerator"]["resourceCount"] == f"{{{{$.inputs.parameters['{channel}']}}}}"
    assert "pipelinechannel--gpu_type" in resources["accelerator"]["resourceType"]
    inputs = _tasks(spec)["train"]["inputs"]["parameters"]
    assert inputs[channel] == {"componentInputParameter": channel}
    groups = _components_on_the_way(spec, "train")
    assert len(groups) >= 3  # exit handler, If/Else branches, If
    for name in groups:
        params = spec["components"][name]["inputDefinitions"]["parameters"]
        assert params[channel]["parameterType"] == "STRING", name
        assert "pipelinechannel--gpu_type" in params, name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpus_per_node"] == {
        "defaultValue": "2",
        "isOptional": True,
        "parameterType": "STRING",
    }
    assert params["gpu_type"]["defaultValue"] == "nvidia.com/gpu"
    assert params["gpu_type"]["parameterType"] == "STRING"
    assert resources["resourceCpuRequest"] == "4" and resources["resourceMemoryLimit"] == "32Gi"


def test_compiled_checkpoint_path_gets_the_run_id_as_its_own_parameter(compiled):
    """KFP substitutes the job-id placeholder only in a parameter that is exactly it: the train
    step gets the root and the run id separately and joins them (ssr.steps.checkpoint_dir_for)."""
    assert RUN_ID_PLACEHOLDER == dsl.PIPELINE_JOB_ID_PLACEHOLDER
    spec = compiled["spec"]
    tasks = _tasks(spec)
    train = tasks["train"]["inputs"]["parameters"]
    assert train["run_id"] == {"runtimeValue": {"constant": dsl.PIPELINE_JOB_ID_PLACEHOLDER}}
    assert train["checkpoint_root"] == {
        "componentInputParameter": "pipelinechannel--checkpoint_root"
    }
    assert "checkpoint_dir" not in train
    register = tasks["register"]["inputs"]["parameters"]
    assert register["pipeline_run_id"] == {
        "runtimeValue": {"constant": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
    }
    # Nowhere is the placeholder part of a longer string (the driver would leave it as is).
    for task in tasks.values():
        for value in task.get("inputs", {}).get("parameters", {}).values():
            constant = value.get("runtimeValue", {}).get("constant")
            if isinstance(constant, str) and "pipeline_job_uuid" in constant:
                assert constant == dsl.PIPELINE_JOB_ID_PLACEHOLDER
    # The default root is a prefix of KFP's artifact bucket that its S3 keys may write.
    root = spec["root"]["inputDefinitions"]["parameters"]["checkpoint_root"]["defaultValue"]
    assert root.startswith("s3://mlpipeline/shared/")


def test_compiled_multi_node_branch_and_exit_handler(compiled):
    """num_nodes == 1: the GPU train task; else a small launcher pod that runs the TrainJob.
    Evaluate and register take the model of whichever ran; an exit handler deletes the job."""
    spec, tasks = compiled["spec"], _tasks(compiled["spec"])
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["num_nodes"]["defaultValue"] == 1
    assert params["num_nodes"]["parameterType"] == "NUMBER_INTEGER"
    assert params["trainjob_deadline_seconds"]["defaultValue"] == 24 * 3600
    assert "gpu_count" not in params
    conditions = {
        t["componentRef"]["name"]: t["triggerPolicy"]["condition"]
        for t in tasks.values()
        if "num_nodes" in str(t.get("triggerPolicy"))
    }
    single = next(c for c, cond in conditions.items() if not cond.startswith("!"))
    multi = next(c for c, cond in conditions.items() if cond.startswith("!"))
    # Each branch trains, then evaluates and (gated) registers the model it trained.
    single_tasks = spec["components"][single]["dag"]["tasks"]
    multi_tasks = spec["components"][multi]["dag"]["tasks"]
    assert {"train", "evaluate"} <= set(single_tasks)
    assert {"train-distributed", "evaluate-2"} <= set(multi_tasks)
    for evaluate, trainer in (
        (single_tasks["evaluate"], "train"),
        (multi_tasks["evaluate-2"], "train-distributed"),
    ):
        model = evaluate["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
        assert model == {"outputArtifactKey": "model", "producerTask": trainer}
    for register in ("register", "register-2"):
        assert tasks[register]["inputs"]["artifacts"]["model"]["componentInputArtifact"]
    # The launcher: the train image as a parameter, the run id alone, no GPU, little CPU.
    launcher = tasks["train-distributed"]["inputs"]["parameters"]
    assert launcher["image"] == {
        "runtimeValue": {"constant": "registry.example.com/ssr:9.9.9-cuda"}
    }
    assert launcher["run_id"] == {"runtimeValue": {"constant": dsl.PIPELINE_JOB_ID_PLACEHOLDER}}
    assert launcher["num_nodes"]["componentInputParameter"].endswith("num_nodes")
    assert launcher["deadline_seconds"]["componentInputParameter"].endswith(
        "trainjob_deadline_seconds"
    )
    resources = _executor(spec, "train-distributed")["resources"]
    assert "accelerator" not in resources and resources["resourceCpuLimit"] == "1"
    assert _executor(spec, "train-distributed")["image"] == "registry.example.com/ssr:9.9.9"
    # The exit handler: cleanup runs after every other task, however they ended.
    root = spec["root"]["dag"]["tasks"]
    cleanup = root["cleanup-run"]
    assert cleanup["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert set(cleanup["dependentTasks"]) == {n for n in root if n != "cleanup-run"}
    status = cleanup["inputs"]["parameters"]["status"]
    assert "taskFinalStatus" in status
    assert cleanup["inputs"]["parameters"]["run_id"] == {
        "runtimeValue": {"constant": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
    }
    # The launcher and the cleanup create/delete in the run's own namespace, with the S3 key
    # only (the TrainJob's pods get every secret by reference).
    k8s = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in ("exec-train-distributed", "exec-cleanup-run"):
        assert k8s[step]["fieldPathAsEnv"] == [
            {"fieldPath": "metadata.namespace", "name": "SSR_NAMESPACE"}
        ]
    assert [s["secretName"] for s in k8s["exec-train-distributed"]["secretAsEnv"]] == [
        "ssr-s3-credentials"
    ]
    assert "secretAsEnv" not in k8s["exec-cleanup-run"]


def _tune_wiring(spec: dict, platform: dict) -> dict:
    """What the compiled pipeline does with the search: the tune task's inputs and where its
    output goes, the train tasks' tuned overrides, the cleanup's trial count."""
    tasks, root = _tasks(spec), spec["root"]["dag"]["tasks"]
    tune = tasks["tune"]
    params = tune["inputs"]["parameters"]
    channel = {"componentInputParameter": "pipelinechannel--tune-Output"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-tune"]
    return {
        "default": spec["root"]["inputDefinitions"]["parameters"]["tune_trials"]["defaultValue"],
        "inside_exit_handler": "tune" in spec["components"]["comp-exit-handler-1"]["dag"]["tasks"],
        "after": tune.get("dependentTasks"),
        "trials": params["trials"]["componentInputParameter"],
        "run_id": params["run_id"],
        "image": params["image"]["runtimeValue"]["constant"],
        "gpus": params["gpus_per_trial"]["componentInputParameter"],
        "train": [
            tasks[t]["inputs"]["parameters"]["tuned_overrides"] == channel
            for t in ("train", "train-distributed")
        ],
        "cleanup_trials": root["cleanup-run"]["inputs"]["parameters"]["tune_trials"],
        "secrets": [s["secretName"] for s in k8s["secretAsEnv"]],
        "namespace": k8s["fieldPathAsEnv"],
        "retries": tune["retryPolicy"]["maxRetryCount"],
        "cache": tune.get("cachingOptions", {}).get("enableCache", False),
    }


def test_compiled_tune_step_off_by_default_and_on_by_option(compiled, tmp_path):
    """The search is a run parameter (tune_trials; the compile sets its default): off or on,
    the same tasks, the train tasks take the tune task's overrides, the cleanup its count."""
    wiring = _tune_wiring(compiled["spec"], compiled["platform"])
    assert wiring.pop("default") == 0
    expected = {
        "inside_exit_handler": True,
        "after": ["preprocess"],
        "trials": "pipelinechannel--tune_trials",
        "run_id": {"runtimeValue": {"constant": dsl.PIPELINE_JOB_ID_PLACEHOLDER}},
        "image": "registry.example.com/ssr:9.9.9-cuda",  # the trials train on the CUDA image
        "gpus": "pipelinechannel--gpus_per_node",
        "train": [True, True],
        "cleanup_trials": {"componentInputParameter": "tune_trials"},
        "secrets": ["ssr-s3-credentials"],
        "namespace": [{"fieldPath": "metadata.namespace", "name": "SSR_NAMESPACE"}],
        "retries": 3,
        "cache": False,
    }
    assert wiring == expected
    path = compile_pipeline(
        tmp_path / "on.yaml", image="registry.example.com/ssr:9.9.9", tune_trials=8
    )
    spec, platform = yaml.safe_load_all(path.read_text())
    wiring = _tune_wiring(spec, platform)
    assert wiring.pop("default") == 8 and wiring == expected
    params = spec["root"]["inputDefinitions"]["parameters"]
    space = parse_space(yaml_load(params["tune_space_yaml"]["defaultValue"]))  # one line
    assert space == load_space(REPO / "configs" / "tune_space.yaml")
    assert params["tune_parallel_trials"]["defaultValue"] == 2
    with pytest.raises(ValueError, match="tune_trials"):
        compile_pipeline(tmp_path / "bad.yaml", tune_trials=-1)


def test_compiled_caching_is_off_for_every_step(compiled):
    """preprocess would be keyed on the data_uri string (new files under the same prefix never
    processed); train, evaluate and register write to object storage and MLflow."""
    tasks = _tasks(compiled["spec"])
    for step in STEPS:
        assert not tasks[step].get("cachingOptions", {}).get("enableCache"), step


def test_compiled_retries_and_gate(compiled):
    spec = compiled["spec"]
    tasks = _tasks(spec)
    # Honoured by KFP >= 2.14 only (2.5 reads retry policies of root tasks); see README.md.
    for step in ("train", "train-distributed"):
        assert tasks[step]["retryPolicy"]["maxRetryCount"] == 3
        assert tasks[step]["retryPolicy"]["backoffDuration"] == "60s"
    gates = [t for t in tasks.values() if "min_accuracy" in str(t.get("triggerPolicy"))]
    assert len(gates) == 2  # one per training branch
    for gate in gates:
        inner = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
        assert {n.rstrip("-2") for n in inner} == {"register", "deploy"}
        for task in inner.values():
            assert task["retryPolicy"]["maxRetryCount"] == 2


def test_compiled_deploy_step(compiled):
    """deploy: the registered version, the InferenceService parameters, the run's namespace
    when none is given, the MLflow credentials only."""
    spec = compiled["spec"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["inference_service"]["defaultValue"] == "ssr-emg"
    assert params["inference_service_namespace"]["defaultValue"] == ""
    assert params["canary_percent"]["defaultValue"] == 10
    deploy = _tasks(spec)["deploy"]["inputs"]
    for name in ("version", "promoted"):  # the step acts only when register promoted
        assert deploy["parameters"][name] == {
            "taskOutputParameter": {"outputParameterKey": name, "producerTask": "register"}
        }
    assert deploy["parameters"]["namespace"] == {
        "componentInputParameter": "pipelinechannel--inference_service_namespace"
    }
    assert "processed" in deploy["artifacts"]  # the raw test split for the smoke test
    register = spec["components"]["comp-register"]["outputDefinitions"]["parameters"]
    assert register["promoted"]["parameterType"] == "BOOLEAN"
    k8s = compiled["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-deploy"]["fieldPathAsEnv"] == [
        {"fieldPath": "metadata.namespace", "name": "SSR_NAMESPACE"}
    ]
    assert [s["secretName"] for s in k8s["exec-deploy"]["secretAsEnv"]] == [
        "ssr-mlflow-credentials"
    ]


def test_compiled_register_gets_baseline_margin(compiled):
    spec = compiled["spec"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["baseline_margin"]["parameterType"] == "NUMBER_DOUBLE"
    assert params["baseline_margin"]["defaultValue"] == 0.0
    register = _tasks(spec)["register"]["inputs"]["parameters"]
    assert register["baseline_margin"] == {
        "componentInputParameter": "pipelinechannel--baseline_margin"
    }


def test_compile_warns_about_local_image_names(tmp_path, capsys):
    assert main(["--image", "localhost/ssr/ssr:0.1.0", "--out", str(tmp_path / "a.yaml")]) == 0
    err = capsys.readouterr().err
    assert "warning: IMAGE localhost/ssr/ssr:0.1.0 is a local name" in err
    assert "TRAIN_IMAGE localhost/ssr/ssr:0.1.0-cuda" in err
    assert main(["--image", "registry.example.com/ssr:1", "--out", str(tmp_path / "b.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err


def _submit_lines() -> list[list[str]]:
    """Every ``kfp ... run create ...`` command in the bash blocks of README.md and docs/*.md,
    as argv."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["kfp"] and "create" in argv:
                commands.append(argv)
    return commands


def test_readme_submit_lines_parse_with_the_installed_kfp_cli(compiled):
    """Global options before `run`, `run create` options after it, parameters whose JSON values
    have the compiled parameters' types (gpus_per_node a string)."""
    from kfp.cli import run as run_cli
    from kfp.cli.cli import cli
    from kfp.cli.utils.parsing import parse_parameter_value

    global_opts = {o for p in cli.params for o in p.opts}
    create_opts = {o for p in run_cli.run.commands["create"].params for o in p.opts}
    flags = {
        o
        for p in run_cli.run.commands["create"].params
        if getattr(p, "is_flag", False)
        for o in p.opts
    }
    params = compiled["spec"]["root"]["inputDefinitions"]["parameters"]
    types = {"STRING": str, "NUMBER_INTEGER": int, "NUMBER_DOUBLE": (int, float), "LIST": list}
    commands = _submit_lines()
    assert len(commands) >= 2
    for argv in commands:
        at = argv.index("run")
        assert argv[at + 1] == "create", argv  # not the deprecated `submit`
        for token in argv[1:at]:
            if token.startswith("-"):
                assert token in global_opts, token
        assert {"--existing-token", "--namespace"} <= set(argv[1:at]), argv
        rest = argv[at + 2 :]
        i = 0
        while i < len(rest):
            token = rest[i]
            if token.startswith("-"):
                assert token in create_opts, token
                i += 1 if token in flags else 2
                continue
            key, _, value = token.partition("=")
            assert key in params, token
            parsed = parse_parameter_value(value)
            assert isinstance(parsed, types[params[key]["parameterType"]]), (token, parsed)
            i += 1


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


def _run(
    tmp_path: Path,
    name: str,
    min_accuracy: float,
    pipeline_yaml: Path | None = None,
    overrides: list[str] | None = None,
):
    return run_local(
        tmp_path / "run",
        epochs=2,
        synth_args=TINY_SYNTH,
        overrides=[*TINY_MODEL, *(overrides or [])],
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
    # The gate ran once; two epochs of a tiny model need not beat the linear baseline.
    action = versions[0].tags["pipeline.gate_action"]
    assert action in {"promote", "reject"}
    # the summary says which, and why
    assert summary["gate"] == {"promote": "promoted", "reject": "rejected"}[action]
    assert summary["gate_reason"] == versions[0].tags["gate.reason"] != ""
    client = MlflowClient(tracking_env.uri)
    if action == "promote":
        assert client.get_model_version_by_alias(name, "champion").version == versions[0].version
    metrics = json.loads(Path(summary["metrics"]).read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and summary["plots"]
    # the evaluate step reports the linear baseline beside the model, in HTML for the KFP UI
    assert summary["baseline_test_accuracy"] == round(metrics["baseline"]["accuracy"], 4)
    report = Path(summary["report"]).read_text()
    assert "baseline" in report and "data:image/png;base64," in report


def test_local_run_from_compiled_yaml(compiled, tracking_env, tmp_path, monkeypatch):
    """The compiled YAML through kfp.local: the first version of a model (no baseline check)
    is promoted, and the deploy step runs and skips itself: no cluster here, even with a
    $KUBECONFIG in the user's shell."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    name = f"ssr-yaml-{uuid.uuid4().hex[:6]}"
    no_baseline = ["registry.baseline_margin=null"]
    summary = _run(tmp_path, name, 0.0, pipeline_yaml=compiled["path"], overrides=no_baseline)
    assert [v.version for v in _versions(tracking_env.uri, name)] == [summary["registered_version"]]
    assert summary["gate"] == "promoted"
    assert summary["deploy"] == "skipped"
    assert summary["tuned_overrides"] == []  # tune_trials=0: the step ran and searched nothing


def test_failed_gate_registers_nothing(tracking_env, tmp_path):
    name = f"ssr-gate-{uuid.uuid4().hex[:6]}"
    summary = _run(tmp_path, name, min_accuracy=1.01)
    assert summary["registered_version"] is None
    assert _versions(tracking_env.uri, name) == []
    assert Path(summary["metrics"]).is_file()  # evaluation ran; only registration was skipped


TINY_SENTENCES = [
    "--sentences=4",
    "--sessions=4",
    "--train-sessions=2",
    "--val-sessions=1",
    "--test-sessions=1",
    "--lm-sentences=100",
]
TINY_CTC = [
    "model.hidden_size=16",
    "model.num_heads=2",
    "model.num_layers=1",
    "training.batch_size=4",
    "training.num_workers=0",
]


def test_local_sentence_run_registers_and_transcribes(tracking_env, tmp_path):
    """The same pipeline for task sentences (configs/sentences_small.yaml): synthetic sentences,
    CTC training, WER evaluation, the WER gate, a registered model that transcribes."""
    from pipelines.run_local import TASK_CONFIGS, transcribe_example

    name = f"ssr-sent-{uuid.uuid4().hex[:6]}"
    summary = run_local(
        tmp_path / "run",
        epochs=1,
        synth_args=TINY_SENTENCES,
        overrides=TINY_CTC,
        min_accuracy=0.0,  # word accuracy max(0, 1 - WER): one epoch need not reach any
        model_name=name,
        config=TASK_CONFIGS["sentences"],
    )
    versions = _versions(tracking_env.uri, name)
    assert [v.version for v in versions] == [summary["registered_version"]]
    assert versions[0].tags["task"] == "sentences"
    assert versions[0].tags["pipeline.gate_action"] in {"promote", "reject"}
    metrics = json.loads(Path(summary["metrics"]).read_text())
    assert metrics["task"] == "sentences" and summary["test_wer"] == round(metrics["wer"], 4)
    assert summary["baseline_test_wer"] == round(metrics["baseline"]["wer"], 4)
    assert any("posteriorgram" in p for p in summary["plots"])
    line = transcribe_example(summary)
    assert line is not None and '"' in line and ".npz" in line  # FILE: "text" (confidence)
