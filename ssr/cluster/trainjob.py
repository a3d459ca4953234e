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


# Labels on the TrainJob's pods: no Istio sidecar (Profile namespaces inject one, and torchrun's
# rendezvous at the master on port 29500 does not get through it: kubeflow/trainer issue 2794),
# and the role MLflow's NetworkPolicy admits (k8s/base/server, k8s/overlays/profile/server): the
# nodes log metrics to MLflow like the pipeline's own pods.
POD_LABELS = {"sidecar.istio.io/inject": "false", "ssr.io/role": "pipeline"}
# Pod Security "restricted" (what k8s/ sets for its own pods): the images run as uid 1000.
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# The fields of the body that older Trainers do not know, and the release that added them: the
# API server drops them silently under its default field validation (Warn); the launcher creates
# with Strict validation and names the release when the server refuses one.
MIN_TRAINER = "v2.3"
FIELD_RELEASES = {
    "terminationGracePeriodSeconds": "v2.3",
    "runtimePatches": "v2.2",
    "activeDeadlineSeconds": "v2.2",
}

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
    """On the runtime's ``node`` pods: :data:`POD_LABELS`, the restricted security context,
    /dev/shm as a memory-backed emptyDir (DataLoader workers; the runtime has none), the
    preemption grace period and, with GPUs, a toleration of the GPU nodes' taint."""
    container = {
        "name": NODE,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod: dict[str, Any] = {
        "securityContext": POD_SECURITY,
        # torchrun (the pod's PID 1) passes SIGTERM to the trainers and waits SHUTDOWN_SECONDS
        # for their checkpoint before SIGKILL; the kubelet must wait longer than that.
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}],
        "containers": [container],
    }
    if gpus:
        pod["tolerations"] = [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    template = {"metadata": {"labels": dict(POD_LABELS)}, "spec": pod}
    replicated = {"name": NODE, "template": {"spec": {"template": template}}}
    return {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}},
    }


def unknown_fields_message(server_message: str) -> str:
    """One line for an API server's strict-validation refusal ("" when it names no unknown
    field): the fields the cluster's Trainer does not know, the release that added each, and
    the one this body needs (:data:`MIN_TRAINER`)."""
    fields = re.findall(r'unknown field "([^"]+)"', server_message)
    if not fields:
        return ""
    named = []
    for path in fields:
        keys = re.sub(r"\[\d+\]", "", path).split(".")
        # the most specific first: a patch field inside runtimePatches names its own release
        since = next((rel for key, rel in FIELD_RELEASES.items() if key in keys), "")
        named.append(f"{path} (Trainer {since}+)" if since else path)
    return (
        f"the cluster's Kubeflow Trainer does not know {', '.join(named)}: ssr's TrainJob "
        f"needs Kubeflow Trainer {MIN_TRAINER} or later (upgrade it, or train on one node)"
    )


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
