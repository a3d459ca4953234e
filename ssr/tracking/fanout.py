"""A tracker that forwards every call to several backends; one failing never stops the others."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ssr.errors import TrackingError
from ssr.redact import redact
from ssr.tracking.tracker import Tracker

log = logging.getLogger(__name__)


class FanoutTracker(Tracker):
    """Forward each call to every backend; a backend that raises is logged as a warning.

    A failing backend keeps receiving later calls (it may recover). The first failure of a
    streak is a warning, repeats are debug messages, and a recovery is logged once.
    """

    def __init__(self, backends: Mapping[str, Tracker]) -> None:
        self.backends = dict(backends)
        self._failing: set[str] = set()

    def _each(self, method: str, call: Callable[[Tracker], Any]) -> None:
        for name, backend in self.backends.items():
            try:
                call(backend)
            except Exception as exc:  # a tracking backend must never stop training
                level = logging.DEBUG if name in self._failing else logging.WARNING
                log.log(
                    level,
                    "tracking: %s %s failed (%s: %s); training goes on",
                    name,
                    method,
                    type(exc).__name__,
                    redact(str(exc)),
                )
                self._failing.add(name)
            else:
                if name in self._failing:
                    log.warning("tracking: %s works again", name)
                    self._failing.discard(name)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._each("log_params", lambda b: b.log_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._each("log_metrics", lambda b: b.log_metrics(metrics, step))

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None:
        self._each("log_image", lambda b: b.log_image(path, key, step))

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None:
        self._each(
            "log_confusion_matrix",
            lambda b: b.log_confusion_matrix(y_true, y_pred, labels, key, step),
        )

    def log_table(
        self,
        key: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        step: int | None = None,
    ) -> None:
        self._each("log_table", lambda b: b.log_table(key, columns, rows, step))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._each("log_artifact", lambda b: b.log_artifact(path, artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._each("set_tags", lambda b: b.set_tags(tags))

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        context: str = "training",
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        self._each("log_dataset", lambda b: b.log_dataset(name, digest, source, context, profile))

    def run_ids(self) -> dict[str, str]:
        ids: dict[str, str] = {}
        for name, backend in self.backends.items():
            try:
                ids.update(backend.run_ids())
            except Exception as exc:
                log.warning("tracking: %s run_ids failed: %s", name, redact(str(exc)))
        return ids

    def finish(self, status: str = "FINISHED") -> None:
        """Finish every backend; a :class:`~ssr.errors.TrackingError` (a required backend lost
        calls) is raised after all have finished, when the job itself succeeded."""
        lost: list[TrackingError] = []

        def call(backend: Tracker) -> None:
            try:
                backend.finish(status)
            except TrackingError as exc:
                lost.append(exc)
                raise

        self._each("finish", call)
        if lost and status == "FINISHED":
            raise lost[0]
