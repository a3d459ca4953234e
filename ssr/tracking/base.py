"""The tracking interface used by the trainer and evaluator."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ssr.redact import redact

if TYPE_CHECKING:
    from ssr.config import Config

log = logging.getLogger(__name__)


@runtime_checkable
class Tracker(Protocol):
    """What the trainer and evaluator log to. Implementations never raise on backend failure."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_image(
        self, path: str | os.PathLike[str], key: str, step: int | None = None
    ) -> None: ...

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None: ...

    def log_artifact(
        self, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def run_ids(self) -> dict[str, str]:
        """Backend run ids (e.g. ``{"mlflow": ..., "wandb": ...}``) stored in checkpoints."""
        ...

    def finish(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Logs nothing; used when tracking is off and in unit tests."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None:
        pass

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def run_ids(self) -> dict[str, str]:
        return {}

    def finish(self, status: str = "FINISHED") -> None:
        pass


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
    from ssr.tracking.context import default_run_name, run_tags
    from ssr.tracking.fanout import FanoutTracker

    ids = dict(resume_ids or {})
    tags = run_tags(cfg, job, fingerprint, device)
    name = default_run_name(cfg, job, fingerprint)
    backends: dict[str, Tracker] = {}
    if cfg.tracking.mlflow.enabled:
        try:
            from ssr.tracking.mlflow_backend import MlflowTracker

            uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.mlflow.tracking_uri
            backends["mlflow"] = MlflowTracker(
                uri, cfg.tracking.mlflow.experiment, name, tags, resume_run_id=ids.get("mlflow")
            )
        except Exception as exc:
            log.warning(
                "tracking: mlflow could not be opened (%s); continuing without it", redact(str(exc))
            )
    wcfg = cfg.tracking.wandb
    if wcfg.enabled:
        try:
            from ssr.tracking.wandb_backend import WandbTracker, resolve_mode

            mode = resolve_mode(wcfg.mode)
            if mode != "disabled":
                resume_id = ids.get("wandb")
                backends["wandb"] = WandbTracker(
                    wcfg.project,
                    None if resume_id and not cfg.tracking.run_name else name,
                    cfg.flat(),
                    tags,
                    entity=wcfg.entity,
                    mode=mode,
                    directory=os.environ.get("WANDB_DIR") or wcfg.dir,
                    resume_id=resume_id,
                    job=job,
                )
        except Exception as exc:
            log.warning(
                "tracking: wandb could not be opened (%s); continuing without it", redact(str(exc))
            )
    if not backends:
        return NullTracker()
    return FanoutTracker(backends)
