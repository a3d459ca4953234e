"""The pipeline's hyper-parameter search as a Katib Experiment, against a Kubernetes API
stand-in and Katib's own API models."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_data import tiny_overrides
from k8s_standin import StandIn, start_standin

from ssr.cluster.katib import (
    METRICS_FORMAT,
    OBJECTIVE,
    KatibError,
    build_experiment,
    experiment_name,
    validate_experiment,
    value_text,
)
from ssr.cluster.katib_launcher import Experiments, launch
from ssr.cluster.secrets import SECRETS
from ssr.steps import StepError
from ssr.steps.tune import cleanup_step, delete_experiment_step, tune_step
from ssr.tuning.space import parse_space
from ssr.yaml_io import yaml_load

NAMESPACE = "team-emg"
RUN_ID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
IMAGE = "registry.example.com/ssr:1.0-cuda"
NAME = experiment_name(RUN_ID)
SPACE = """\
params:
  training.learning_rate: {type: log, low: 1.0e-4, high: 1.0e-2}
  model.hidden_size: {type: categorical, choices: [64, 128]}
  model.num_layers: {type: int, low: 1, high: 3}
  model.dropout: {type: float, low: 0.0, high: 0.3, step: 0.1}
sampler: {startup_trials: 3}
pruner: {startup_trials: 2, warmup_epochs: 4}
"""
BEST = {
    "training.learning_rate": "0.0021",
    "model.hidden_size": "128",
    "model.num_layers": "2",
    "model.dropout": "0.1",
}


def status(state: str = "Running", best: dict | None = None, **counts: int) -> dict:
    """A Katib ExperimentStatus: conditions, trial counters, the current optimal trial."""
    conditions = [{"type": "Created", "status": "True", "reason": "ExperimentCreated"}]
    reason = {"Running": "ExperimentRunning", "Succeeded": "ExperimentMaxTrialsReached"}
    message = "Experiment has failed because max failed count has reached"
    cond = {"type": state, "status": "True", "reason": reason.get(state, "ExperimentFailed")}
    conditions.append(cond | ({"message": message} if state == "Failed" else {}))
    out: dict = {"conditions": conditions, **counts}
    if best:
        metric = {"name": OBJECTIVE, "min": "0.4125", "max": "1.2", "latest": "0.43"}
        out["currentOptimalTrial"] = {
            "bestTrialName": f"{NAME}-x7k2p9qd",
            "parameterAssignments": [{"name": k, "value": v} for k, v in best.items()],
            "observation": {"metrics": [metric]},
        }
    return out


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StandIn]:
    state, server = start_standin()
    yield state
    server.shutdown()


@pytest.fixture
def standin(standin_server: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    standin_server.reset()
    monkeypatch.setenv("KUBECONFIG", str(standin_server.kubeconfig(tmp_path / "kc", NAMESPACE)))
    monkeypatch.delenv("SSR_NAMESPACE", raising=False)
    monkeypatch.setenv("SSR_KATIB_POLL_SECONDS", "0.01")
    return standin_server


@pytest.fixture
def cluster(standin: StandIn, s3_env, monkeypatch: pytest.MonkeyPatch) -> dict:
    bucket = s3_env.create_bucket("tune")
    return {"standin": standin, "s3": s3_env, "bucket": bucket, "root": f"s3://{bucket}/runs"}


def _step(cluster: dict, tmp_path: Path, **kw) -> dict:
    artifact = tmp_path / "artifact"
    (artifact / "processed").mkdir(parents=True, exist_ok=True)
    args = {
        "artifact_dir": str(artifact),
        "artifact_uri": f"s3://{cluster['bucket']}/kfp/preprocess/processed-artifact",
        "checkpoint_root": cluster["root"],
        "run_id": RUN_ID,
        "config_yaml": "training:\n  batch_size: 16\n",
        "overrides": ["training.num_workers=2"],
        "epochs": 30,
        "space_yaml": SPACE,
        "trials": 8,
        "parallel": 3,
        "gpus_per_trial": "1",
        "gpu_type": "nvidia.com/gpu",
        "image": IMAGE,
        "deadline_seconds": 7200,
    }
    return tune_step(**(args | kw))


def expected_body(bucket: str) -> dict:
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    for secret, keys in SECRETS.items():
        for key, var in keys.items():
            ref = {"name": secret, "key": key}
            ref |= {"optional": True} if secret == "ssr-wandb-credentials" else {}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    runs = f"s3://{bucket}/runs/{RUN_ID}"
    script = (
        f"ssr katib trial --config-uri={runs}/tune/config.yaml -- training.num_workers=2 "
        f"data.processed_dir=s3://{bucket}/kfp/preprocess/processed-artifact/processed "
        "training.num_epochs=30 "
        "'training.learning_rate=${trialParameters.training_learning_rate}' "
        "'model.hidden_size=${trialParameters.model_hidden_size}' "
        "'model.num_layers=${trialParameters.model_num_layers}' "
        "'model.dropout=${trialParameters.model_dropout}' "
        "training.checkpoint_dir=/tmp/ssr-trial/checkpoints "
        "training.output_dir=/tmp/ssr-trial/outputs "
        "'tracking.run_name=${trialParameters.trialName}' "
        f"tracking.wandb.group={NAME}"
    )
    gpu = "nvidia.com/gpu"
    container = {
        "name": "trial",
        "image": IMAGE,
        "command": ["sh", "-c"],
        "args": [script],
        "env": env,
        "resources": {
            "requests": {"cpu": "4", "memory": "16Gi"},
            "limits": {"cpu": "4", "memory": "16Gi", gpu: "1"},
        },
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
        "tolerations": [{"key": gpu, "operator": "Exists", "effect": "NoSchedule"}],
    }
    labels = {"sidecar.istio.io/inject": "false", "ssr.io/role": "pipeline"}
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "ssr",
                "app.kubernetes.io/component": "tune",
                "ssr.io/pipeline-run-id": RUN_ID,
            },
            "annotations": {"ssr.io/pipeline-run-id": RUN_ID},
        },
        "spec": {
            "objective": {
                "type": "minimize",
                "objectiveMetricName": "val_session_mean_loss",
                "additionalMetricNames": ["val_loss", "train_loss"],
                "metricStrategies": [{"name": "val_session_mean_loss", "value": "min"}],
            },
            "algorithm": {
                "algorithmName": "multivariate-tpe",  # Optuna's TPE in Katib v0.19
                "algorithmSettings": [
                    {"name": "n_startup_trials", "value": "3"},
                    {"name": "random_state", "value": "42"},  # training.seed
                ],
            },
            "earlyStopping": {
                "algorithmName": "medianstop",
                "algorithmSettings": [
                    {"name": "min_trials_required", "value": "2"},
                    {"name": "start_step", "value": "5"},
                ],
            },
            "parameters": [
                {
                    "name": "training.learning_rate",
                    "parameterType": "double",
                    "feasibleSpace": {"min": "0.0001", "max": "0.01", "distribution": "logUniform"},
                },
                {
                    "name": "model.hidden_size",
                    "parameterType": "categorical",
                    "feasibleSpace": {"list": ["64", "128"]},
                },
                {
                    "name": "model.num_layers",
                    "parameterType": "int",
                    "feasibleSpace": {
                        "min": "1",
                        "max": "3",
                        "distribution": "uniform",
                        "step": "1",
                    },
                },
                {
                    "name": "model.dropout",
                    "parameterType": "double",
                    "feasibleSpace": {
                        "min": "0.0",
                        "max": "0.3",
                        "distribution": "uniform",
                        "step": "0.1",
                    },
                },
            ],
            "maxTrialCount": 8,
            "parallelTrialCount": 3,
            "maxFailedTrialCount": 2,
            "resumePolicy": "Never",
            "metricsCollectorSpec": {
                "collector": {"kind": "StdOut"},
                "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}},
            },
            "trialTemplate": {
                "primaryContainerName": "trial",
                "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
                "trialParameters": [
                    {
                        "name": "training_learning_rate",
                        "description": "float [0.0001, 0.01] log",
                        "reference": "training.learning_rate",
                    },
                    {
                        "name": "model_hidden_size",
                        "description": "categorical [64, 128]",
                        "reference": "model.hidden_size",
                    },
                    {
                        "name": "model_num_layers",
                        "description": "int [1, 3]",
                        "reference": "model.num_layers",
                    },
                    {
                        "name": "model_dropout",
                        "description": "float [0, 0.3] step 0.1",
                        "reference": "model.dropout",
                    },
                    {
                        "name": "trialName",
                        "description": "the trial's name",
                        "reference": "${trialSpec.Name}",
                    },
                ],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"labels": {"app.kubernetes.io/part-of": "ssr"}},
                    "spec": {
                        "backoffLimit": 0,
                        "activeDeadlineSeconds": 7200,
                        "template": {"metadata": {"labels": labels}, "spec": pod},
                    },
                },
            },
        },
    }


def _status_is_katibs(value: dict) -> None:
    """The stand-in's scripted status reads back whole through Katib's own status model."""
    from kubeflow_katib_api.models import V1beta1ExperimentStatus

    assert V1beta1ExperimentStatus.from_dict(value).to_dict() == value


def test_search_posts_the_exact_body_and_returns_the_best_values(cluster, tmp_path, capsys):
    standin = cluster["standin"]
    script = [
        status(trialsRunning=3),
        status(trialsRunning=3),  # unchanged: no second progress line
        status(best=BEST, trialsRunning=3, trialsSucceeded=2, trialsEarlyStopped=1),
        status("Succeeded", BEST, trialsSucceeded=6, trialsEarlyStopped=1, trialsFailed=1),
    ]
    for step in script:
        _status_is_katibs(step)
    standin.experiment_script[NAME] = script
    result = _step(cluster, tmp_path)
    assert result["overrides"] == [f"{k}={v}" for k, v in BEST.items()]
    assert result["state"] == "Succeeded" and result[OBJECTIVE] == 0.4125
    (post,) = standin.calls("POST", "experiments")
    assert post[2] == expected_body(cluster["bucket"])
    validate_experiment(post[2])
    assert post[2]["metadata"]["name"] == NAME and len(NAME) <= 40
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(post[2])  # by reference only
    # The config the trials read went beside the run's checkpoints.
    obj = (
        cluster["s3"]
        .client()
        .get_object(Bucket=cluster["bucket"], Key=f"runs/{RUN_ID}/tune/config.yaml")
    )
    assert obj["Body"].read() == b"training:\n  batch_size: 16\n"
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith(f"[{NAME}]")]
    assert len(progress) == 4, out  # created, then one line per change
    assert progress[0].endswith("trials of 8: none yet")
    assert progress[1].endswith("trials of 8: 3 running")
    assert "best val_session_mean_loss 0.4125" in progress[2] and "model.hidden_size=128" in out
    assert "6 succeeded, 1 early-stopped, 1 failed" in progress[3]


def test_search_is_off_by_default_and_asks_no_cluster(standin, tmp_path):
    result = tune_step(
        str(tmp_path), "", str(tmp_path), "{{$.pipeline_job_uuid}}", "", [], 0, "", 0, 1, "1",
        "nvidia.com/gpu", IMAGE, 60,
    )  # fmt: skip
    assert result == {"overrides": [], "trials": 0}
    assert not delete_experiment_step(RUN_ID, 0, "SUCCEEDED")
    assert standin.requests == []


def test_fields_katib_or_kubernetes_do_not_know_are_refused_before_sending(standin):
    space = parse_space(yaml_space(), "space.yaml")
    body = build_experiment(NAME, NAMESPACE, IMAGE, space, [], trials=4, parallel=2)
    validate_experiment(body)
    cases = [
        (("spec",), "maxTrialCounts", 4, r"fields Katib does not know: \['spec\.maxTrialCounts'\]"),
        (("spec",), "maxTrialCount", "4", r"maxTrialCount: Input should be a valid integer"),
        (("spec", "trialTemplate"), "retain", "yes", r"retain: Input should be a valid boolean"),
        (
            ("spec", "trialTemplate", "trialSpec", "spec", "template", "spec"),
            "securityContxt",
            {},
            r"trialSpec\.spec\.template\.spec\.securityContxt: unknown field",
        ),
        (("spec", "trialTemplate", "trialSpec", "spec"), "backoffLimit", "0", r"expected int"),
    ]
    for path, key, value, message in cases:
        broken = json.loads(json.dumps(body))
        target = broken
        for part in path:
            target = target[part]
        target[key] = value
        with pytest.raises(KatibError, match=message):
            launch(Experiments(NAMESPACE), broken, deadline_seconds=60)
    assert standin.requests == []  # nothing was sent
    bad = json.loads(json.dumps(body))
    bad["spec"]["trialTemplate"]["trialParameters"].pop()  # ${trialParameters.trialName} unset
    with pytest.raises(KatibError, match="trial parameters"):
        validate_experiment(bad)


def yaml_space() -> dict:
    import yaml

    return yaml.safe_load(SPACE)


def test_server_refusals_are_one_clear_line(standin, tmp_path, capsys):
    from ssr.cli import main

    (tmp_path / "space.yaml").write_text(SPACE)
    argv = ["katib", "launch", "--run-id", RUN_ID, "--image", IMAGE, "--trials", "4"]
    argv += ["--space", str(tmp_path / "space.yaml")]
    standin.webhook_refusal = (
        'Cannot create the Experiment "x" in namespace "team-emg": the namespace lacks label '
        '"katib.kubeflow.org/metrics-collector-injection: enabled"'
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"ssr katib: error: cannot create Experiment {NAMESPACE}/{NAME}: ")
    assert "Katib refused it: Cannot create" in err and "admission webhook" not in err
    assert "label the namespace katib.kubeflow.org/metrics-collector-injection=enabled" in err
    # strict field validation by a Katib whose CRD schema lacks a field (played by the stand-in)
    standin.webhook_refusal = ""
    standin.unknown_fields.add("spec.resumePolicy")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "does not know spec.resumePolicy: ssr's Experiment needs Katib v0.19" in err
    assert standin.experiments == {}


def test_a_retry_reattaches_without_a_second_create(cluster, tmp_path):
    standin = cluster["standin"]
    standin.add_experiment(NAMESPACE, expected_body(cluster["bucket"]), status(trialsRunning=3))
    standin.experiment_script[NAME] = [status("Succeeded", BEST, trialsSucceeded=8)]
    assert _step(cluster, tmp_path)["overrides"][1] == "model.hidden_size=128"
    assert standin.calls("POST", "experiments") == []
    assert standin.calls("DELETE", "experiments") == []


def test_a_failed_search_is_recreated_and_a_failing_one_fails_the_step(cluster, tmp_path):
    standin = cluster["standin"]
    failed = status("Failed", trialsFailed=2)
    standin.add_experiment(NAMESPACE, expected_body(cluster["bucket"]), failed)
    standin.experiment_script[NAME] = [failed, status("Succeeded", BEST, trialsSucceeded=8)]
    _step(cluster, tmp_path)
    methods = [m for m, path, _ in standin.requests if "experiments" in path and m != "GET"]
    assert methods == ["DELETE", "POST"]
    assert standin.calls("DELETE", "experiments")[0][2]["propagationPolicy"] == "Foreground"
    standin.reset()
    standin.experiment_script[NAME] = [status(trialsRunning=1), status("Failed", trialsFailed=2)]
    with pytest.raises(StepError, match="max failed count has reached") as err:
        _step(cluster, tmp_path)
    assert f"Experiment {NAMESPACE}/{NAME} Failed" in str(err.value)  # the search's own state


def test_the_deadline_stops_the_search_and_keeps_the_best_so_far(standin):
    space = parse_space(yaml_space(), "space.yaml")
    body = build_experiment(NAME, NAMESPACE, IMAGE, space, [], trials=8, parallel=2)
    created = 1893456000.0  # 2030-01-01T00:00:00Z, the stand-in's creationTimestamp
    standin.experiment_script[NAME] = [status(best=BEST, trialsRunning=2, trialsSucceeded=3)]
    times = iter([created + 599, created + 601])  # created, then polled past the deadline
    result = launch(
        Experiments(NAMESPACE), body, deadline_seconds=600, poll=0, clock=lambda: next(times)
    )
    assert result.state == "Running" and result.overrides[0] == "training.learning_rate=0.0021"
    assert standin.experiments == {}  # deleted: its running trials stop with it
    standin.reset()
    with pytest.raises(KatibError, match="deadline .* before any trial reported"):
        launch(Experiments(NAMESPACE), body, deadline_seconds=600, clock=lambda: created + 601)


def test_cleanup_deletes_the_search_and_tolerates_none(standin):
    space = parse_space(yaml_space(), "space.yaml")
    body = build_experiment(NAME, NAMESPACE, IMAGE, space, [], trials=4, parallel=2)
    standin.add_experiment(NAMESPACE, body, status(trialsRunning=2))
    assert delete_experiment_step(RUN_ID, 4, "FAILED")
    assert standin.experiments == {}
    assert delete_experiment_step(RUN_ID, 4, "CANCELLED")  # 404: nothing to delete, no error


def test_the_exit_handler_deletes_the_search_and_the_trainjob(standin):
    from ssr.cluster.trainjob import build_trainjob, job_name

    space = parse_space(yaml_space(), "space.yaml")
    body = build_experiment(NAME, NAMESPACE, IMAGE, space, [], trials=4, parallel=2)
    standin.add_experiment(NAMESPACE, body, status(trialsRunning=2))
    job = build_trainjob(job_name(RUN_ID), NAMESPACE, IMAGE, 2, 1, [])
    standin.add_job(NAMESPACE, job, "Running")
    cleanup_step(RUN_ID, 2, 4, "FAILED")
    assert standin.experiments == {} and standin.jobs == {}
    standin.requests.clear()
    cleanup_step(RUN_ID, 1, 0, "SUCCEEDED")  # neither made: no cluster asked
    assert standin.requests == []


def test_cli_dry_run_prints_a_valid_body(tmp_path, capsys):
    from ssr.cli import main

    (tmp_path / "space.yaml").write_text(SPACE)
    argv = ["katib", "launch", "--run-id", RUN_ID, "-n", NAMESPACE, "--image", IMAGE]
    argv += ["--space", str(tmp_path / "space.yaml"), "--trials", "2", "--parallel", "4"]
    assert main([*argv, "--gpus", "0", "--dry-run", "--", "training.batch_size=8"]) == 0
    body = json.loads(capsys.readouterr().out)
    validate_experiment(body)
    spec = body["spec"]
    assert spec["maxTrialCount"] == 2 and spec["parallelTrialCount"] == 2  # at most the trials
    pod = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nvidia.com/gpu" not in json.dumps(pod["containers"])
    (tmp_path / "bad.yaml").write_text("params:\n  training.learning_rat: {type: log}\n")
    argv[argv.index(str(tmp_path / "space.yaml"))] = str(tmp_path / "bad.yaml")
    assert main([*argv, "--dry-run"]) == 2
    assert "did you mean training.learning_rate" in capsys.readouterr().err


def test_choices_read_back_as_the_same_values():
    for value in (64, 0.5, True, None, "gelu", "128", "yes", " padded"):
        assert yaml_load(value_text(value)) == value
    space = parse_space(
        {"params": {"model.centring": {"type": "categorical", "choices": ["it's", "b"]}}}
    )
    with pytest.raises(KatibError, match="may not contain a quote"):
        build_experiment(NAME, NAMESPACE, IMAGE, space, [], trials=2, parallel=1)


def test_a_trial_runs_as_katib_runs_it_and_prints_what_its_collector_parses(
    processed, tmp_path, capsys, one_thread
):
    """Katib substitutes the trial's values into the template, then runs the container's
    ``sh -c`` script with its output sent to a file (wrapWorkerContainer). The script's words,
    as sh splits them, are run by the CLI; the metric lines parse as Katib parses them."""
    from ssr.cli import main

    space = parse_space(yaml_space(), "space.yaml")
    (tmp_path / "config.yaml").write_text("training:\n  batch_size: 8\n")
    work = tmp_path / "trial"
    args = [a for a in tiny_overrides(processed, work) if not a.startswith("model.num_layers")]
    body = build_experiment(
        NAME, NAMESPACE, IMAGE, space, args, trials=2, parallel=1,
        config_uri=str(tmp_path / "config.yaml"), workdir=str(work),
    )  # fmt: skip
    values = {**BEST, "model.hidden_size": "16", "training.learning_rate": "3.0e-3"}
    template = json.dumps(body["spec"]["trialTemplate"]["trialSpec"])
    for param in body["spec"]["trialTemplate"]["trialParameters"]:
        value = values.get(param["reference"], f"{NAME}-x7k2p9qd")
        template = template.replace(f"${{trialParameters.{param['name']}}}", value)
    (container,) = json.loads(template)["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    # sh's word splitting of the script (the `ssr` word replaced by printing its arguments)
    shown = subprocess.run(
        ["sh", "-c", "ssr() { printf '%s\\n' \"$@\"; }; " + script + " 1>out.log 2>&1"],
        cwd=tmp_path, check=True,
    )  # fmt: skip
    argv = (tmp_path / "out.log").read_text().splitlines()
    assert shown.returncode == 0 and argv == shlex.split(script)[1:]
    assert "model.hidden_size=16" in argv and "training.learning_rate=3.0e-3" in argv
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [OBJECTIVE, "val_loss", "train_loss"]
    found = [
        (m[0], float(m[1]))
        for line in lines
        if any(n in line for n in names)
        for m in re.findall(METRICS_FORMAT, line)
        if m[0] in names
    ]
    assert [n for n, _ in found] == names * 3  # three epochs, one line per metric
    stamps = [line.split(" ", 1)[0] for line in lines if "ssr-katib-metric" in line]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", s) for s in stamps)
    assert (work / "checkpoints" / "best_model.pth").is_file()
