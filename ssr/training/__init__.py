"""Training: the :class:`Trainer`, checkpoints, early stopping, devices and DDP helpers.

:func:`run_training` is the whole ``ssr train`` job (resume resolution, tracker, fit) for
callers such as the pipeline components.
"""

from __future__ import annotations

import logging
from typing import Any

from ssr.config import Config
from ssr.tracking.base import Tracker, open_tracker
from ssr.tracking.context import data_fingerprint
from ssr.training import distributed
from ssr.training.checkpoint import find_resume, load_checkpoint, save_checkpoint
from ssr.training.early_stopping import EarlyStopping
from ssr.training.trainer import Trainer, TrainResult, stop_on_sigterm

__all__ = [
    "EarlyStopping",
    "TrainResult",
    "Trainer",
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
    that checkpoint.
    """
    if resume is None:
        return None, None
    if resume == "auto":
        found = find_resume(cfg.training.checkpoint_dir, cfg.storage)
        log.info("--resume auto: %s", f"resuming from {found[1]}" if found else "starting fresh")
        return found if found else (None, None)
    return load_checkpoint(resume, cfg.storage), resume


def run_training(
    cfg: Config, resume: str | None = None, tracker: Tracker | None = None
) -> TrainResult:
    """Train as ``ssr train`` does: open the tracker (continuing the runs stored in the
    resume checkpoint), fit, and finish the tracker with the outcome."""
    state, path = resolve_resume(cfg, resume)
    info = distributed.env_info()
    own = tracker is None
    if tracker is None:
        ids = dict(state.get("tracking", {})) if state else None
        fingerprint = data_fingerprint(cfg.data.processed_dir)
        tracker = open_tracker(
            cfg, job="train", resume_ids=ids, rank=info.rank, fingerprint=fingerprint
        )
    trainer = Trainer(cfg, tracker=tracker)
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
