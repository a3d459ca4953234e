"""The ``TrainJob`` (Kubeflow Trainer v2.3, ``trainer.kubeflow.org/v1alpha1``) of a multi-node
training run: its name, its body and a check of that body against Trainer's own API models."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

from ssr.cluster.secrets import secret_env
from ssr.errors import SSRError

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
PLURAL = "trainjobs"
RUNTIME_PLURAL = "clustertrainingruntimes"
RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Trainer v2.3 installs
NODE = "node"  # the runtime's replicated job and its training container
GPU_RESOURCE = "nvidia.com/gpu"
PATCH_MANAGER = "ssr.io/trainjob-launcher"
DEFAULT_DEADLINE_SECONDS = 24 * 3600
NAME_PREFIX = "ssr-train-"
RUN_ID_LABEL = "ssr.io/pipeline-run-id"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


# Preemption: the trainers get SHUTDOWN_SECONDS after SIGTERM to save a checkpoint (torchrun's
# --shutdown-timeout), inside a pod grace period with room for torchrun itself to exit.
SHUTDOWN_SECONDS = 90
GRACE_SECONDS = SHUTDOWN_SECONDS + 30


class TrainJobError(SSRError):
    """A TrainJob could not be built, created, or it failed."""


def job_name(run_id: str) -> str:
    """``ssr-train-`` + 12 hex digits of the run id's SHA-256: one name per pipeline run, the
    same on every retry of the step, a valid DNS-1035 label short enough for the names JobSet
    derives from it (``<name>-node-0-0-xxxxx``)."""
    run_id = run_id.strip()
    if not run_id or "{{" in run_id:
        raise TrainJobError(f"run id {run_id!r} is not a pipeline run id")
    return NAME_PREFIX + hashlib.sha256(run_id.encode()).hexdigest()[:12]


def _resources(gpus: int, cpu: str, memory: str, gpu_resource: str) -> dict[str, Any]:
    limits: dict[str, str] = {"cpu": str(cpu), "memory": str(memory)}
    if gpus:
        limits[gpu_resource] = str(gpus)  # quantities as strings
    requests = {"cpu": str(cpu), "memory": str(memory)}
    return {"requests": requests, "limits": limits}


def _runtime_patch(gpus: int, shm_size: str, gpu_resource: str) -> dict[str, Any]:
    """/dev/shm as a memory-backed emptyDir (DataLoader workers; the runtime has none), the
    preemption grace period and, with GPUs, a toleration of the GPU nodes' taint; on the
    runtime's ``node`` pods."""
    pod: dict[str, Any] = {
        # torchrun (the pod's PID 1) passes SIGTERM to the trainers and waits SHUTDOWN_SECONDS
        # for their checkpoint before SIGKILL; the kubelet must wait longer than that.
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}],
        "containers": [{"name": NODE, "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}],
    }
    if gpus:
        pod["tolerations"] = [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    replicated = {"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}},
    }


def build_trainjob(
    name: str,
    namespace: str,
    image: str,
    num_nodes: int,
    gpus_per_node: int,
    train_args: Sequence[str],
    *,
    config_uri: str = "",
    run_id: str = "",
    deadline_seconds: int = DEFAULT_DEADLINE_SECONDS,
    cpu: str = "8",
    memory: str = "32Gi",
    shm_size: str = "8Gi",
    gpu_resource: str = GPU_RESOURCE,
    master_timeout: int = 600,
    rendezvous_timeout: int = 900,
) -> dict[str, Any]:
    """The TrainJob body: ``num_nodes`` nodes of ``image``, each running ``ssr trainjob node``
    (wait for the master's DNS record, then ``torchrun ... -m ssr train TRAIN_ARGS --resume
    auto``) with one process per GPU; credentials from the Secrets by reference only."""
    if num_nodes < 1:
        raise TrainJobError(f"num_nodes must be at least 1, got {num_nodes}")
    if gpus_per_node < 0:
        raise TrainJobError(f"gpus_per_node must be >= 0, got {gpus_per_node}")
    if deadline_seconds < 1:
        raise TrainJobError(
            f"the deadline must be a positive number of seconds: {deadline_seconds}"
        )
    args = ["trainjob", "node", f"--master-timeout={master_timeout}"]
    args.append(f"--rendezvous-timeout={rendezvous_timeout}")
    if config_uri:
        args.append(f"--config-uri={config_uri}")
    args += ["--", *train_args]
    labels = {"app.kubernetes.io/part-of": "ssr", "app.kubernetes.io/component": "train"}
    annotations = {}
    if run_id:
        annotations[RUN_ID_LABEL] = run_id
        if _LABEL_VALUE.match(run_id):
            labels[RUN_ID_LABEL] = run_id
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}, *secret_env()]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": RUNTIME},
            "activeDeadlineSeconds": int(deadline_seconds),
            "trainer": {
                "image": image,
                "command": ["ssr"],
                "args": args,
                "numNodes": int(num_nodes),
                "numProcPerNode": max(int(gpus_per_node), 1),
                "resourcesPerNode": _resources(gpus_per_node, cpu, memory, gpu_resource),
                "env": env,
            },
            "runtimePatches": [_runtime_patch(gpus_per_node, shm_size, gpu_resource)],
        },
    }


def _diff(sent: Any, kept: Any, path: str = "") -> list[str]:
    if isinstance(sent, dict) and isinstance(kept, dict):
        out = [f"{path}.{k}".lstrip(".") for k in sent if k not in kept]
        for key in sent.keys() & kept.keys():
            out += _diff(sent[key], kept[key], f"{path}.{key}")
        return out
    if isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        pairs = enumerate(zip(sent, kept, strict=True))
        return [d for i, (a, b) in pairs for d in _diff(a, b, f"{path}[{i}]")]
    return [] if sent == kept else [path.lstrip(".") or "<root>"]


def validate_trainjob(body: dict[str, Any]) -> None:
    """Check ``body`` against Trainer's API models (``kubeflow_trainer_api`` 2.3): wrong types
    fail, and so does any field the models do not know (they would drop it silently)."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    from pydantic import ValidationError

    try:
        kept = TrainerV1alpha1TrainJob.from_dict(body).to_dict()
    except (ValidationError, ValueError) as exc:
        raise TrainJobError(f"invalid TrainJob body: {exc}") from None
    unknown = _diff(body, kept)
    if unknown:
        raise TrainJobError(f"TrainJob body has fields Trainer does not know: {unknown}")
