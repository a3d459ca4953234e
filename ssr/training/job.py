"""The whole ``ssr train`` job for the CLI and the pipeline steps: :func:`run_training` resolves
``--resume``, checks the checkpoint folder, opens the tracker and runs the :class:`Trainer`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ssr.config import Config
from ssr.data.processed import MANIFEST, read_manifest
from ssr.errors import CheckpointError
from ssr.storage.objects import delete, list_objects
from ssr.storage.pointer import read_pointer
from ssr.tracking.base import Tracker, open_tracker
from ssr.tracking.context import data_fingerprint
from ssr.training import distributed
from ssr.training.checkpoint import (
    check_features,
    find_resume,
    load_checkpoint,
    save_checkpoint,
)
from ssr.training.early_stopping import EarlyStopping
from ssr.training.signals import stop_on_sigterm
from ssr.training.trainer import EpochCallback, Trainer, TrainResult

__all__ = [
    "EarlyStopping",
    "TrainResult",
    "Trainer",
    "check_checkpoint_dir",
    "check_resume_identity",
    "find_resume",
    "load_checkpoint",
    "resolve_resume",
    "run_training",
    "save_checkpoint",
]

log = logging.getLogger(__name__)


def resolve_resume(cfg: Config, resume: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The state to resume from and where it came from, or ``(None, None)`` for a fresh start.

    ``auto`` -> the checkpoint that ``latest.json`` in ``training.checkpoint_dir`` names
    (verified against it), or a fresh start when there is none; a path or ``s3://`` URI ->
    that checkpoint. Either way the checkpoint must match the data set and the run
    (:func:`check_resume_identity`).
    """
    if resume is None:
        return None, None
    if resume == "auto":
        found = find_resume(cfg.training.checkpoint_dir, cfg.storage)
        log.info("--resume auto: %s", f"resuming from {found[1]}" if found else "starting fresh")
        if not found:
            return None, None
        state, source = found
    else:
        state, source = load_checkpoint(resume, cfg.storage), resume
    check_resume_identity(cfg, state, source)
    return state, source


def check_resume_identity(cfg: Config, state: dict[str, Any], source: str) -> None:
    """Refuse to continue a checkpoint of other data or of another run.

    The data fingerprint, then the feature hash, of the checkpoint must equal those of the
    manifest of ``data.processed_dir`` (skipped when unknown, e.g. a remote data set). When
    ``training.run_id`` is set (the pipeline sets it to its run id), the checkpoint must carry
    the same ``training.run_id`` in its stored config.
    """
    stored = str(state.get("data_fingerprint") or "")
    current = data_fingerprint(cfg.data.processed_dir)
    if stored and current and stored != current:
        raise CheckpointError(
            f"{source}: trained on data with fingerprint {stored}, but "
            f"{cfg.data.processed_dir} has fingerprint {current}; refusing to resume "
            "(use another training.checkpoint_dir or start without --resume)"
        )
    local = cfg.data.processed_dir
    if "://" not in local and (Path(local) / MANIFEST).is_file():
        check_features(state, read_manifest(local), source, local)
    run_id = cfg.training.run_id
    if run_id is None:
        return
    config = state.get("config")
    training = config.get("training") if isinstance(config, dict) else None
    stored_run = training.get("run_id") if isinstance(training, dict) else None
    if stored_run != run_id:
        raise CheckpointError(
            f"{source}: belongs to run {stored_run!r}, not to this run {run_id!r} "
            "(training.run_id); refusing to resume another run's checkpoint"
        )


def check_checkpoint_dir(cfg: Config, overwrite: bool = False, rank: int = 0) -> None:
    """Refuse to start a fresh training in a ``training.checkpoint_dir`` that holds another
    run's checkpoints (``latest.json`` or ``*.pth``), naming the folder and what is there.

    With ``overwrite`` they are deleted first (by rank 0), so no old checkpoint is left beside
    the new run's.
    """
    directory = cfg.training.checkpoint_dir
    found = [
        o
        for o in list_objects(directory, cfg.storage)
        if o.name == "latest.json" or o.name.endswith(".pth")
    ]
    if not found:
        return
    if overwrite:
        if rank == 0:
            for obj in found:
                delete(obj.uri, cfg.storage)
            log.warning("--overwrite: deleted %d checkpoint file(s) in %s", len(found), directory)
        return
    pointer = read_pointer(directory, cfg.storage)
    if pointer is not None:
        p = pointer[0]
        runs = ", ".join(f"{k} {v}" for k, v in sorted(p.run_ids.items())) or "no tracking ids"
        what = f"a run at epoch {p.epoch} ({runs})"
    else:
        what = f"{len(found)} checkpoint file(s), e.g. {found[0].name}"
    raise CheckpointError(
        f"{directory}: holds checkpoints of another training, {what}; continue it with "
        "--resume auto, replace it with --overwrite, or set another training.checkpoint_dir"
    )


def run_training(
    cfg: Config,
    resume: str | None = None,
    tracker: Tracker | None = None,
    overwrite: bool = False,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train as ``ssr train`` does: open the tracker (continuing the runs stored in the
    resume checkpoint), fit, and finish the tracker with the outcome.

    Without ``resume``, a checkpoint directory holding another run's checkpoints is refused
    unless ``overwrite`` (see :func:`check_checkpoint_dir`). ``on_epoch`` goes to the
    :class:`Trainer` (a tuning trial reports to its study and is pruned through it).
    """
    info = distributed.env_info()
    if resume is None:
        check_checkpoint_dir(cfg, overwrite, info.rank)
    state, path = resolve_resume(cfg, resume)
    own = tracker is None
    if tracker is None:
        ids = dict(state.get("tracking", {})) if state else None
        fingerprint = data_fingerprint(cfg.data.processed_dir)
        tracker = open_tracker(
            cfg, job="train", resume_ids=ids, rank=info.rank, fingerprint=fingerprint
        )
    trainer = Trainer(cfg, tracker=tracker, on_epoch=on_epoch)
    status = "FAILED"
    try:
        with stop_on_sigterm(trainer):
            result = trainer.fit(resume=path, resume_state=state)
        status = "KILLED" if result.stop_requested else "FINISHED"
        return result
    finally:
        if own:
            tracker.finish(status)
        distributed.teardown()
