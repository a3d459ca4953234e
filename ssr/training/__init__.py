"""Training: the :class:`Trainer`, checkpoints, early stopping, devices and DDP helpers.

:func:`run_training` is the whole ``ssr train`` job (resume resolution, tracker, fit) for
callers such as the pipeline components.
"""

from __future__ import annotations

import logging
from typing import Any

from ssr.config import Config
from ssr.tracking.base import Tracker, open_tracker
from ssr.training import distributed
from ssr.training.checkpoint import find_resume, load_checkpoint, save_checkpoint
from ssr.training.early_stopping import EarlyStopping
from ssr.training.trainer import Trainer, TrainResult

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


def resolve_resume(cfg: Config, resume: str | None) -> str | None:
    """``auto`` -> ``last.pth`` in ``training.checkpoint_dir`` if present, else None."""
    if resume == "auto":
        found = find_resume(cfg.training.checkpoint_dir)
        log.info("--resume auto: %s", f"resuming from {found}" if found else "starting fresh")
        return found
    return resume


def run_training(
    cfg: Config, resume: str | None = None, tracker: Tracker | None = None
) -> TrainResult:
    """Train as ``ssr train`` does: open the tracker (continuing the runs stored in the
    resume checkpoint), fit, and finish the tracker with the outcome."""
    path = resolve_resume(cfg, resume)
    state: dict[str, Any] | None = load_checkpoint(path) if path else None
    info = distributed.env_info()
    own = tracker is None
    if tracker is None:
        ids = dict(state.get("tracking", {})) if state else None
        tracker = open_tracker(cfg, job="train", resume_ids=ids, rank=info.rank)
    trainer = Trainer(cfg, tracker=tracker)
    status = "FAILED"
    try:
        result = trainer.fit(resume=path, resume_state=state)
        status = "KILLED" if result.stop_requested else "FINISHED"
        return result
    finally:
        if own:
            tracker.finish(status)
        distributed.teardown()
