"""Pipeline steps of the hyper-parameter search: the tune step that runs ``ssr katib launch``
(a Katib Experiment) and the exit handler's clean-up that deletes it.

Off unless the pipeline asks for trials: with ``trials`` 0 the step returns no overrides and
asks no cluster, so ``kfp.local`` runs (and pipelines without Katib) are unchanged.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssr.cluster.katib import experiment_name
from ssr.cluster.katib_launcher import describe
from ssr.config import load_config
from ssr.steps import StepError, check_writable, checkpoint_dir_for, config_args, run_cli
from ssr.steps.trainjob import delete_trainjob_step, remote_data_uri
from ssr.storage import is_s3, join, write_bytes

log = logging.getLogger(__name__)

TUNE_DIR = "tune"  # beside the run's checkpoints: the config the trials read


def tune_step(
    artifact_dir: str,
    artifact_uri: str,
    checkpoint_root: str,
    run_id: str,
    config_yaml: str,
    overrides: Sequence[str],
    epochs: int,
    space_yaml: str,
    trials: int,
    parallel: int,
    gpus_per_trial: str,
    gpu_type: str,
    image: str,
    deadline_seconds: int,
) -> dict[str, Any]:
    """``ssr katib launch``: ``trials`` trials of ``ssr train`` with values from
    ``space_yaml``, on the run's data and config; the best trial's values as ``overrides``
    for the train step (none when ``trials`` is 0). A retried step re-attaches."""
    if int(trials) <= 0:
        log.info("tune_trials is 0: no hyper-parameter search, the train step uses the config")
        return {"overrides": [], "trials": 0}
    if not space_yaml.strip():
        raise StepError("tune_space_yaml is empty: give the search space (configs/tune_space.yaml)")
    gpus = str(gpus_per_trial).strip()
    if not gpus.isdigit():
        raise StepError(f"gpus_per_node must be a whole number, got {gpus_per_trial!r}")
    checkpoint_dir = checkpoint_dir_for(checkpoint_root, run_id)
    if not is_s3(checkpoint_dir):
        raise StepError(
            f"checkpoint_root {checkpoint_root!r} is a local folder, which Katib's trial pods "
            "cannot read: give an s3:// prefix"
        )
    with tempfile.TemporaryDirectory() as tmp:
        cfg_args = config_args(config_yaml, tmp)
        storage = load_config(cfg_args[1] if cfg_args else None, list(overrides)).storage
        check_writable(checkpoint_dir, storage)
        launch = ["katib", "launch", "--run-id", run_id.strip(), "--image", image]
        launch += ["--trials", str(int(trials)), "--parallel", str(int(parallel))]
        launch += ["--deadline", str(int(deadline_seconds)), "--gpus", gpus]
        launch += ["--gpu-resource", gpu_type]
        if config_yaml.strip():
            config_uri = join(checkpoint_dir, TUNE_DIR, "config.yaml")
            write_bytes(config_uri, config_yaml.encode(), storage)
            launch += ["--config-uri", config_uri]
        space = Path(tmp) / "space.yaml"
        space.write_text(space_yaml)
        output = Path(tmp) / "best.json"
        launch += ["--space", str(space), "--output", str(output)]
        processed = remote_data_uri(artifact_uri, artifact_dir, checkpoint_dir, storage)
        train_args = [*overrides, f"data.processed_dir={processed}"]
        train_args += [f"training.num_epochs={epochs}"] if int(epochs) > 0 else []
        try:
            run_cli([*launch, "--", *train_args])
        except StepError as exc:  # fail with the search's own state, not only an exit status
            detail = describe(experiment_name(run_id))
            raise StepError(f"{exc}; {detail}" if detail else str(exc)) from None
        result: dict[str, Any] = json.loads(output.read_text())
    log.info("tuned overrides for the train step: %s", " ".join(result["overrides"]))
    return result


def delete_experiment_step(run_id: str, trials: int, final_state: str = "") -> bool:
    """The exit handler's cleanup: ``ssr katib delete`` of the run's Experiment (none is
    fine). Without trials no search was made and no cluster is asked (``kfp.local`` runs)."""
    if int(trials) <= 0:
        log.info("no hyper-parameter search: no Experiment to delete")
        return False
    log.info("pipeline finished (%s): deleting the run's Katib Experiment", final_state or "?")
    run_cli(["katib", "delete", "--run-id", run_id.strip()])
    return True


def cleanup_step(run_id: str, num_nodes: int, tune_trials: int, final_state: str = "") -> None:
    """The exit handler: delete the run's Experiment and TrainJob (each only if the run made
    one). Both are tried; the first failure is raised after the second has been tried."""
    failures: list[Exception] = []
    for step, count in ((delete_experiment_step, tune_trials), (delete_trainjob_step, num_nodes)):
        try:
            step(run_id, count, final_state)
        except Exception as exc:  # the other clean-up still runs
            log.error("cleanup: %s", exc)
            failures.append(exc)
    if failures:
        raise failures[0]
