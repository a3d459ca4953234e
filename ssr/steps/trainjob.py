"""Pipeline steps of multi-node training: the train step that runs ``ssr trainjob launch``
(a Kubeflow Trainer TrainJob) and the exit handler's clean-up that deletes the job."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssr.cluster.launcher import describe
from ssr.cluster.trainjob import job_name
from ssr.steps import (
    PROCESSED,
    StepError,
    check_writable,
    checkpoint_dir_for,
    config_args,
    export_best,
    run_cli,
    training_overrides,
)

log = logging.getLogger(__name__)


def remote_data_uri(artifact_uri: str, artifact_dir: str, checkpoint_dir: str, storage: Any) -> str:
    """Where TrainJob nodes read the processed data set: ``<artifact URI>/processed`` when the
    artifact store is S3 (KFP's ``minio://`` URIs name the same bucket and key), else a copy
    uploaded beside the checkpoints (``kfp.local``: the artifact is a local folder)."""
    from ssr.storage import is_s3, join, upload_dir

    uri = artifact_uri.rstrip("/")
    if uri.startswith("minio://"):
        uri = "s3://" + uri[len("minio://") :]
    if is_s3(uri):
        return join(uri, PROCESSED)
    if "://" in uri:
        raise StepError(
            f"the processed data set is at {artifact_uri}, which TrainJob nodes cannot read: "
            "use an S3 (or MinIO) pipeline root for multi-node training"
        )
    target = join(checkpoint_dir, PROCESSED)
    log.info("uploading the processed data set to %s for the TrainJob nodes", target)
    upload_dir(Path(artifact_dir) / PROCESSED, target, storage)
    return target


def distributed_train_step(
    artifact_dir: str,
    artifact_uri: str,
    model_path: str,
    checkpoint_root: str,
    run_id: str,
    config_yaml: str,
    overrides: Sequence[str],
    epochs: int,
    num_nodes: int,
    gpus_per_node: str,
    image: str,
    deadline_seconds: int,
) -> dict[str, Any]:
    """``ssr trainjob launch``: ``torchrun ... -m ssr train --resume auto`` on ``num_nodes``
    nodes in ``<checkpoint_root>/<run_id>`` (which must be ``s3://``), then export
    ``best_model.pth`` like :func:`train_step`. A retried step re-attaches to the run's job."""
    from ssr.config import load_config
    from ssr.storage import is_s3, join, write_bytes

    checkpoint_dir = checkpoint_dir_for(checkpoint_root, run_id)
    if not is_s3(checkpoint_dir):
        raise StepError(
            f"checkpoint_root {checkpoint_root!r} is a local folder, which the nodes of a "
            f"{num_nodes}-node TrainJob cannot share: give an s3:// prefix"
        )
    gpus = str(gpus_per_node).strip()
    if not gpus.isdigit():
        raise StepError(f"gpus_per_node must be a whole number, got {gpus_per_node!r}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg_args = config_args(config_yaml, tmp)
        storage = load_config(cfg_args[1] if cfg_args else None, list(overrides)).storage
    check_writable(checkpoint_dir, storage)
    launch = ["trainjob", "launch", "--run-id", run_id.strip(), "--image", image]
    launch += ["--num-nodes", str(num_nodes), "--gpus-per-node", gpus]
    launch += ["--deadline", str(deadline_seconds)]
    if config_yaml.strip():
        config_uri = join(checkpoint_dir, "config.yaml")
        write_bytes(config_uri, config_yaml.encode(), storage)
        launch += ["--config-uri", config_uri]
    processed = remote_data_uri(artifact_uri, artifact_dir, checkpoint_dir, storage)
    train_args = [
        *overrides,
        f"data.processed_dir={processed}",
        *training_overrides(checkpoint_dir, run_id, epochs),
    ]
    try:
        run_cli([*launch, "--", *train_args])
    except StepError as exc:  # fail with the job's own message, not only an exit status
        detail = describe(job_name(run_id))
        raise StepError(f"{exc}; {detail}" if detail else str(exc)) from None
    return {**export_best(checkpoint_dir, model_path, storage, run_id), "num_nodes": int(num_nodes)}


def delete_trainjob_step(run_id: str, num_nodes: int, final_state: str = "") -> bool:
    """The exit handler's cleanup: ``ssr trainjob delete`` of the run's TrainJob (none is
    fine). With one node no job was made and no cluster is asked (``kfp.local`` runs)."""
    if int(num_nodes) <= 1:
        log.info("single-node run: no TrainJob to delete")
        return False
    log.info("pipeline finished (%s): deleting the run's TrainJob", final_state or "unknown")
    run_cli(["trainjob", "delete", "--run-id", run_id.strip()])
    return True
