"""Opening the tracker of a run: the table of backends and :func:`open_tracker`.

:class:`Tracker` and :class:`NullTracker` live in :mod:`ssr.tracking.tracker` and are
re-exported here.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ssr.errors import TrackingError
from ssr.redact import redact
from ssr.tracking.context import default_run_name, run_tags
from ssr.tracking.fanout import FanoutTracker
from ssr.tracking.tracker import NullTracker, RunSpec, Tracker

if TYPE_CHECKING:
    from ssr.config import Config

__all__ = ["BACKENDS", "NullTracker", "RunSpec", "Tracker", "backend_class", "open_tracker"]

log = logging.getLogger(__name__)

# backend name (also its section in ``cfg.tracking``, with an ``enabled`` switch) -> its
# Tracker class as "module:Class", imported only when enabled (mlflow and wandb load slowly)
BACKENDS: dict[str, str] = {
    "mlflow": "ssr.tracking.mlflow_backend:MlflowTracker",
    "wandb": "ssr.tracking.wandb_backend:WandbTracker",
}


def backend_class(name: str) -> type[Tracker]:
    """The Tracker class registered as ``name`` in :data:`BACKENDS`."""
    module, _, cls = BACKENDS[name].partition(":")
    found = getattr(importlib.import_module(module), cls)
    if not (isinstance(found, type) and issubclass(found, Tracker)):
        raise TypeError(f"tracking backend {name!r}: {BACKENDS[name]} is not a Tracker")
    return found


def open_tracker(
    cfg: Config,
    job: str = "train",
    resume_ids: Mapping[str, str] | None = None,
    rank: int = 0,
    fingerprint: str | None = None,
    device: str | None = None,
) -> Tracker:
    """The tracker for a run: fans out to the backends enabled in ``cfg.tracking``.

    ``resume_ids`` (from a checkpoint) continue the same runs; ranks other than 0 log nothing.
    ``fingerprint`` (of the processed data set) and ``device`` become run tags. A backend that
    cannot be opened is left out with a warning; with none left this is a :class:`NullTracker`.
    ``MLFLOW_TRACKING_URI``, ``WANDB_MODE`` and ``WANDB_DIR`` override the config.
    """
    if rank != 0:
        return NullTracker()
    ids = dict(resume_ids or {})
    tags = run_tags(cfg, job, fingerprint, device)
    name = default_run_name(cfg, job, fingerprint)
    backends: dict[str, Tracker] = {}
    for backend in BACKENDS:
        if not getattr(cfg.tracking, backend).enabled:
            continue
        spec = RunSpec(cfg, job, name, tags, resume_id=ids.get(backend))
        try:
            tracker = backend_class(backend).open(spec)
        except TrackingError:  # a backend declared required cannot work: the job must not run
            for opened in backends.values():
                opened.finish("FAILED")
            raise
        except Exception as exc:
            log.warning(
                "tracking: %s could not be opened (%s); continuing without it",
                backend,
                redact(str(exc)),
            )
            continue
        if tracker is not None:
            backends[backend] = tracker
    if not backends:
        return NullTracker()
    return FanoutTracker(backends)
