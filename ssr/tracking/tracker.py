"""The :class:`Tracker` base every tracking backend derives from, and :class:`NullTracker`.

A backend overrides what it supports; everything else is a no-op (as in Lightning's
``Logger``). To add one, write a subclass with :meth:`Tracker.open` and name it in
:data:`ssr.tracking.base.BACKENDS`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ssr.config import Config


@dataclass(frozen=True)
class RunSpec:
    """The run a backend opens: its config, job, default name, tags and id to resume."""

    cfg: Config
    job: str
    name: str
    tags: Mapping[str, str] = field(default_factory=dict)
    resume_id: str | None = None


def _plain(value: Any) -> Any:
    """A table cell as a JSON value: numpy scalars become Python numbers, odd objects text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)


def table_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """``rows`` as lists of JSON values; a ValueError when a row does not fit ``columns``."""
    if not columns:
        raise ValueError("a table needs at least one column")
    out = []
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"table row {i} has {len(row)} values for {len(columns)} columns")
        out.append([_plain(v) for v in row])
    return out


class Tracker(ABC):
    """What the trainer and evaluator log to. Implementations never raise on backend failure
    outside :class:`~ssr.tracking.fanout.FanoutTracker`, which contains them."""

    @classmethod
    def open(cls, spec: RunSpec) -> Tracker | None:
        """The backend's run for ``spec``; None when its own settings switch it off."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from a config")

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's parameters (a flat mapping)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar values at ``step``."""

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None:
        """Record the image file ``path`` under ``key`` at ``step``."""
        return None  # a no-op unless the backend overrides it

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None:
        """Record the confusion matrix of ``y_true`` against ``y_pred``."""
        return None  # a no-op unless the backend overrides it

    def log_table(
        self,
        key: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        step: int | None = None,
    ) -> None:
        """Record a table (``rows`` of JSON-friendly values, one per column) under ``key`` at
        ``step``, e.g. reference and hypothesis transcripts."""
        return None  # a no-op unless the backend overrides it

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Store a file or directory with the run."""
        return None  # a no-op unless the backend overrides it

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Attach string tags to the run."""
        return None  # a no-op unless the backend overrides it

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        context: str = "training",
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """Record that the run used data set ``name`` (``digest``: its fingerprint, ``source``:
        its URI) for ``context`` (training, evaluation), so a model traces back to its data."""
        return None  # a no-op unless the backend overrides it

    def run_ids(self) -> dict[str, str]:
        """Backend run ids (e.g. ``{"mlflow": ..., "wandb": ...}``) stored in checkpoints."""
        return {}

    def finish(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED)."""
        return None  # a no-op unless the backend overrides it


class NullTracker(Tracker):
    """Logs nothing; used when tracking is off and in unit tests."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass
