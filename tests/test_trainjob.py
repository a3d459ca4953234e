"""Multi-node training as a Kubeflow Trainer TrainJob, against a Kubernetes API stand-in."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from k8s_standin import StandIn, start_standin
from test_k8s import render

from ssr.cluster import node
from ssr.cluster.secrets import SECRETS
from ssr.cluster.trainjob import (
    TrainJobError,
    build_trainjob,
    job_name,
    validate_trainjob,
)
from ssr.steps import StepError
from ssr.steps.trainjob import delete_trainjob_step, distributed_train_step

NAMESPACE = "team-emg"
RUN_ID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
IMAGE = "registry.example.com/ssr:1.0-cuda"
FAKE_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "s3-secret-value-4f1c",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password-9a2e",
    "WANDB_API_KEY": "wandb-key-77d0",
}


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StandIn]:
    state, server = start_standin()
    yield state
    server.shutdown()


@pytest.fixture
def standin(standin_server: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    """The stand-in, emptied, with the ``kubernetes`` client pointed at it by a kubeconfig."""
    standin_server.reset()
    monkeypatch.setenv("KUBECONFIG", str(standin_server.kubeconfig(tmp_path / "kc", NAMESPACE)))
    monkeypatch.delenv("SSR_NAMESPACE", raising=False)
    return standin_server


@pytest.fixture
def cluster(standin: StandIn, s3_env, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Stand-in + S3 with a finished run's best checkpoint, and fake credentials in env."""
    for key, value in FAKE_SECRETS.items():
        monkeypatch.setenv(key, value)
    bucket = s3_env.create_bucket("ckpt")
    root = f"s3://{bucket}/runs"
    monkeypatch.setenv("SSR_TRAINJOB_POLL_SECONDS", "0.05")  # the launcher's default is 10 s
    return {"standin": standin, "s3": s3_env, "root": root, "bucket": bucket}


def _put_best(s3, bucket: str, run_id: str, loss: float = 0.25) -> None:
    import io

    data = io.BytesIO()
    torch.save({"best_val_loss": loss, "epoch": 7}, data)
    s3.client().put_object(Bucket=bucket, Key=f"runs/{run_id}/best_model.pth", Body=data.getvalue())


def _step(cluster: dict, tmp_path: Path, run_id: str = RUN_ID, **kw) -> dict:
    artifact = tmp_path / "artifact"
    (artifact / "processed").mkdir(parents=True, exist_ok=True)
    args = {
        "artifact_dir": str(artifact),
        "artifact_uri": f"s3://{cluster['bucket']}/kfp/preprocess/processed-artifact",
        "model_path": str(tmp_path / "model" / "best_model.pth"),
        "checkpoint_root": cluster["root"],
        "run_id": run_id,
        "config_yaml": "training:\n  batch_size: 16\n",
        "overrides": ["training.learning_rate=0.001"],
        "epochs": 5,
        "num_nodes": 2,
        "gpus_per_node": "4",
        "image": IMAGE,
        "deadline_seconds": 3600,
    }
    args.update(kw)
    return distributed_train_step(**args)


def expected_body(bucket: str) -> dict:
    ckpt = f"s3://{bucket}/runs/{RUN_ID}"
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    for secret, keys in SECRETS.items():
        for key, var in keys.items():
            ref = {"name": secret, "key": key} | (
                {"optional": True} if secret == "ssr-wandb-credentials" else {}
            )
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {
            "name": job_name(RUN_ID),
            "namespace": NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "ssr",
                "app.kubernetes.io/component": "train",
                "ssr.io/pipeline-run-id": RUN_ID,
            },
            "annotations": {"ssr.io/pipeline-run-id": RUN_ID},
        },
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": "torch-distributed",
            },
            "activeDeadlineSeconds": 3600,
            "trainer": {
                "image": IMAGE,
                "command": ["ssr"],
                "args": [
                    "trainjob",
                    "node",
                    "--master-timeout=600",
                    "--rendezvous-timeout=900",
                    f"--config-uri={ckpt}/config.yaml",
                    "--",
                    "training.learning_rate=0.001",
                    f"data.processed_dir=s3://{bucket}/kfp/preprocess/processed-artifact/processed",
                    f"training.checkpoint_dir={ckpt}",
                    f'training.run_id="{RUN_ID}"',
                    "training.num_epochs=5",
                ],
                "numNodes": 2,
                "numProcPerNode": 4,
                "resourcesPerNode": {
                    "requests": {"cpu": "8", "memory": "32Gi"},
                    "limits": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"},
                },
                "env": env,
            },
            "runtimePatches": [
                {
                    "manager": "ssr.io/trainjob-launcher",
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": "node",
                                        "template": {
                                            "spec": {
                                                "template": {
                                                    "metadata": {
                                                        "labels": {
                                                            "sidecar.istio.io/inject": "false",
                                                            "ssr.io/role": "pipeline",
                                                        }
                                                    },
                                                    "spec": {
                                                        "securityContext": {
                                                            "runAsNonRoot": True,
                                                            "runAsUser": 1000,
                                                            "runAsGroup": 1000,
                                                            "fsGroup": 1000,
                                                            "seccompProfile": {
                                                                "type": "RuntimeDefault"
                                                            },
                                                        },
                                                        "terminationGracePeriodSeconds": 120,
                                                        "volumes": [
                                                            {
                                                                "name": "dshm",
                                                                "emptyDir": {
                                                                    "medium": "Memory",
                                                                    "sizeLimit": "8Gi",
                                                                },
                                                            }
                                                        ],
                                                        "containers": [
                                                            {
                                                                "name": "node",
                                                                "securityContext": {
                                                                    "allowPrivilegeEscalation": (
                                                                        False
                                                                    ),
                                                                    "capabilities": {
                                                                        "drop": ["ALL"]
                                                                    },
                                                                },
                                                                "volumeMounts": [
                                                                    {
                                                                        "name": "dshm",
                                                                        "mountPath": "/dev/shm",
                                                                    }
                                                                ],
                                                            }
                                                        ],
                                                        "tolerations": [
                                                            {
                                                                "key": "nvidia.com/gpu",
                                                                "operator": "Exists",
                                                                "effect": "NoSchedule",
                                                            }
                                                        ],
                                                    },
                                                }
                                            }
                                        },
                                    }
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }


def _node_pod(body: dict) -> dict:
    """The pod template the runtime patch puts on the ``node`` replicated job."""
    spec = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    (job,) = [j for j in spec["replicatedJobs"] if j["name"] == "node"]
    return job["template"]["spec"]["template"]


def test_node_pods_skip_istio_reach_mlflow_and_meet_restricted_pod_security(tmp_path):
    """Profile namespaces inject an Istio sidecar that torchrun's rendezvous cannot pass; the
    MLflow NetworkPolicies admit pods labelled ssr.io/role=pipeline; Pod Security "restricted"
    needs non-root, no privilege escalation, no capabilities and a seccomp profile."""
    pod = _node_pod(build_trainjob("ssr-train-x", NAMESPACE, IMAGE, 2, 1, []))
    labels = pod["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "false"
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    # The labels are those the MLflow NetworkPolicies of every overlay admit.
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    for overlay in ("profile", "dev"):
        objects = render(overlay, tmp_path / overlay)
        policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        admitted = [
            peer["podSelector"]["matchLabels"]
            for policy in policies
            if policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
            == "ssr-mlflow"
            for rule in policy["spec"].get("ingress", [])
            for peer in rule.get("from", [])
            if peer.get("podSelector", {}).get("matchLabels")
        ]
        assert any(sel.items() <= labels.items() for sel in admitted), (overlay, admitted)


OLD_TRAINERS = {
    # Fields of ssr's TrainJob missing from each release's TrainJob CRD (kubeflow/trainer
    # manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml at v2.1.0 and v2.2.1).
    "v2.1": {"spec.activeDeadlineSeconds", "spec.runtimePatches"},
    "v2.2": {
        "spec.runtimePatches.trainingRuntimeSpec.template.spec.replicatedJobs.template.spec"
        ".template.spec.terminationGracePeriodSeconds"
    },
}


@pytest.mark.parametrize("release", sorted(OLD_TRAINERS))
def test_an_older_trainer_is_refused_by_name_not_silently_stripped(
    cluster, tmp_path, release, capsys
):
    """The launcher creates with strict field validation: a Trainer whose CRD lacks a field
    refuses the job (the server's default, Warn, would drop the field and run without it)."""
    standin = cluster["standin"]
    standin.unknown_fields.update(OLD_TRAINERS[release])
    with pytest.raises(StepError):
        _step(cluster, tmp_path)
    err = capsys.readouterr().err
    assert "needs Kubeflow Trainer v2.3 or later" in err
    assert f"(Trainer {'v2.2' if release == 'v2.1' else 'v2.3'}+)" in err
    for path in OLD_TRAINERS[release]:
        assert path.split(".")[-1] in err
    assert standin.jobs == {}  # nothing was created without the fields


def test_job_name_is_one_dns_label_per_run():
    name = job_name(RUN_ID)
    assert name == job_name(f" {RUN_ID} ")  # a retried step finds the same job
    assert name != job_name("6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e60")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 24
    for bad in ("", "{{$.pipeline_job_uuid}}"):
        with pytest.raises(TrainJobError):
            job_name(bad)


def test_validation_refuses_fields_trainer_does_not_know():
    body = build_trainjob("ssr-train-x", NAMESPACE, IMAGE, 2, 1, ["a.b=1"])
    validate_trainjob(body)
    body["spec"]["trainer"]["numNode"] = 2
    with pytest.raises(TrainJobError, match=r"spec\.trainer\.numNode"):
        validate_trainjob(body)
    body = build_trainjob("ssr-train-x", NAMESPACE, IMAGE, 2, 1, [])
    body["spec"]["trainer"]["numNodes"] = "2"
    with pytest.raises(TrainJobError, match="invalid TrainJob"):
        validate_trainjob(body)


def test_launch_posts_the_exact_body_and_exports_the_model(cluster, tmp_path, capsys):
    standin = cluster["standin"]
    name = job_name(RUN_ID)
    standin.script[name] = [("Running", ""), ("Running", ""), ("Complete", "")]
    standin.logs[name] = ["epoch 1 val_loss 0.9", "epoch 2 val_loss 0.25"]
    _put_best(cluster["s3"], cluster["bucket"], RUN_ID)
    result = _step(cluster, tmp_path)
    assert result["best_val_loss"] == 0.25 and result["epoch"] == 7
    assert Path(tmp_path / "model" / "best_model.pth").is_file()
    posts = standin.calls("POST")
    assert len(posts) == 1
    body = posts[0][2]
    assert body == expected_body(cluster["bucket"])
    validate_trainjob(body)
    text = json.dumps(body)
    for value in FAKE_SECRETS.values():
        assert value not in text
    env = {e["name"]: e for e in body["spec"]["trainer"]["env"]}
    for var in FAKE_SECRETS:
        assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["name"]
    # The config went beside the checkpoints; node 0's log reached the step's log.
    obj = (
        cluster["s3"]
        .client()
        .get_object(Bucket=cluster["bucket"], Key=f"runs/{RUN_ID}/config.yaml")
    )
    assert obj["Body"].read() == b"training:\n  batch_size: 16\n"
    out = capsys.readouterr().out
    assert "[node-0] epoch 1 val_loss 0.9" in out and "[node-0] epoch 2 val_loss 0.25" in out


def test_failed_job_fails_the_step_with_its_message(cluster, tmp_path):
    standin = cluster["standin"]
    message = "TrainJob exceeded its active deadline (deadline 3600 s)"
    standin.script[job_name(RUN_ID)] = [("Running", ""), ("Failed", message)]
    with pytest.raises(StepError, match=re.escape(message)):
        _step(cluster, tmp_path)


def test_retry_reattaches_to_the_running_job(cluster, tmp_path):
    standin = cluster["standin"]
    earlier = build_trainjob(job_name(RUN_ID), NAMESPACE, IMAGE, 2, 4, [])
    standin.add_job(NAMESPACE, earlier, "Running")
    standin.script[job_name(RUN_ID)] = [("Running", ""), ("Complete", "")]
    _put_best(cluster["s3"], cluster["bucket"], RUN_ID, loss=0.5)
    assert _step(cluster, tmp_path)["best_val_loss"] == 0.5
    assert standin.calls("POST") == [] and standin.calls("DELETE") == []


def test_retry_recreates_a_failed_job_and_uses_a_complete_one(cluster, tmp_path):
    standin = cluster["standin"]
    name = job_name(RUN_ID)
    standin.add_job(NAMESPACE, build_trainjob(name, NAMESPACE, IMAGE, 2, 4, []), "Failed", "OOM")
    _put_best(cluster["s3"], cluster["bucket"], RUN_ID)
    _step(cluster, tmp_path)
    methods = [m for m, path, _ in standin.requests if "trainjobs" in path and m != "GET"]
    assert methods == ["DELETE", "POST"]
    assert standin.calls("DELETE")[0][2]["propagationPolicy"] == "Foreground"
    standin.requests.clear()  # now Complete: a further retry only exports the model
    _step(cluster, tmp_path)
    assert standin.calls("POST") == [] and standin.calls("DELETE") == []


def test_local_checkpoint_root_is_refused(cluster, tmp_path):
    with pytest.raises(StepError, match="local folder.*s3://"):
        _step(cluster, tmp_path, checkpoint_root=str(tmp_path / "ckpt"))
    assert cluster["standin"].requests == []


def test_missing_runtime_is_named(cluster, tmp_path, capsys):
    cluster["standin"].runtimes.discard("torch-distributed")
    try:
        with pytest.raises(StepError, match="does not exist"):
            _step(cluster, tmp_path)
        assert "ClusterTrainingRuntime torch-distributed not found" in capsys.readouterr().err
        assert cluster["standin"].calls("POST") == []
    finally:
        cluster["standin"].runtimes.add("torch-distributed")


def test_cleanup_deletes_the_job_and_tolerates_none(standin):
    name = job_name(RUN_ID)
    standin.add_job(NAMESPACE, build_trainjob(name, NAMESPACE, IMAGE, 2, 1, []), "Running")
    assert delete_trainjob_step(RUN_ID, 2, "FAILED")
    assert (NAMESPACE, name) not in standin.jobs
    assert delete_trainjob_step(RUN_ID, 2, "CANCELLED")  # 404: nothing to delete, no error
    standin.requests.clear()
    assert not delete_trainjob_step(RUN_ID, 1, "SUCCEEDED")  # one node: no cluster call
    assert standin.requests == []


def test_node_waits_for_the_master_then_execs_torchrun(tmp_path, monkeypatch):
    env = {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "4",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": "ssr-train-x-node-0-0.ssr-train-x",
        "PET_MASTER_PORT": "29500",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    answers = iter([OSError("NXDOMAIN"), OSError("NXDOMAIN"), "10.0.0.7"])

    def resolve(host: str) -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert node.wait_for_dns("m", timeout=5, interval=0.01, resolve=resolve) >= 0
    with pytest.raises(Exception, match="did not resolve within"):
        node.wait_for_dns("m", 0.05, 0.01, resolve=lambda h: (_ for _ in ()).throw(OSError()))
    config = tmp_path / "run.yaml"
    config.write_text("training: {}\n")
    monkeypatch.setattr(node, "wait_for_dns", lambda host, timeout: 0.0)
    seen = []
    node.run_node(
        ["training.num_epochs=3"],
        str(config),
        rendezvous_timeout=300,
        workdir=tmp_path / "w",
        execvp=lambda prog, argv: seen.append(argv),
    )
    assert seen == [
        [
            "torchrun",
            "--nnodes=2",
            "--nproc-per-node=4",
            "--node-rank=1",
            f"--master-addr={env['PET_MASTER_ADDR']}",
            "--master-port=29500",
            "--rdzv-conf=timeout=300",
            "--shutdown-timeout=90",
            "-m",
            "ssr",
            "train",
            "--config",
            str(tmp_path / "w" / "config.yaml"),
            "training.num_epochs=3",
            "--resume",
            "auto",
        ]
    ]


def test_cli_dry_run_prints_a_valid_body(capsys):
    from ssr.cli import main

    argv = ["trainjob", "launch", "--run-id", RUN_ID, "-n", NAMESPACE, "--image", IMAGE]
    assert (
        main([*argv, "--num-nodes", "3", "--gpus-per-node", "0", "--dry-run", "--", "a.b=1"]) == 0
    )
    body = json.loads(capsys.readouterr().out)
    validate_trainjob(body)
    trainer = body["spec"]["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
    assert trainer["args"][-2:] == ["--", "a.b=1"]


def test_launcher_step_through_kfp_local(cluster, processed, tmp_path, monkeypatch, capfd):
    """The launcher component and the exit handler's cleanup, run by kfp.local's
    SubprocessRunner: the component reaches the stand-in through $KUBECONFIG, uploads the local
    data set beside the checkpoints, follows the job, exports the model; cleanup deletes it."""
    from kfp import local
    from trainjob_pipeline import launch_only

    standin, s3 = cluster["standin"], cluster["s3"]
    standin.default_script = [("Running", ""), ("Complete", "")]

    def finish(job: dict) -> None:
        run_id = job["metadata"]["annotations"]["ssr.io/pipeline-run-id"]
        _put_best(s3, cluster["bucket"], run_id, loss=0.125)
        standin.logs[job["metadata"]["name"]] = ["rank 0: epoch 1 done"]

    standin.on_complete = finish

    monkeypatch.setenv("SSR_NAMESPACE", NAMESPACE)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    launch_only(artifact_uri=str(processed.parent), checkpoint_root=cluster["root"], image=IMAGE)
    (post,) = standin.calls("POST")
    validate_trainjob(post[2])
    args = post[2]["spec"]["trainer"]["args"]
    run_id = post[2]["metadata"]["annotations"]["ssr.io/pipeline-run-id"]
    assert f"data.processed_dir={cluster['root']}/{run_id}/processed" in args
    listed = s3.client().list_objects_v2(
        Bucket=cluster["bucket"], Prefix=f"runs/{run_id}/processed/"
    )
    assert listed.get("KeyCount", 0) > 0  # the local data set, uploaded for the nodes
    assert [r[0] for r in standin.calls("DELETE")] == ["DELETE"]  # the exit handler's cleanup
    assert standin.jobs == {}
    out = capfd.readouterr()
    assert "[node-0] rank 0: epoch 1 done" in out.out + out.err
    models = list((tmp_path / "kfp").rglob("model"))
    assert any(m.is_file() and torch.load(m)["best_val_loss"] == 0.125 for m in models)
