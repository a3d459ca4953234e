"""The ordered queue of MLflow calls: kept while the server is unreachable, sent when it is back.

Every call is queued and the queue is sent at once, in order. When the server cannot be reached
the queue is kept (metrics keep their original step and time) and the next send is tried after
``retry_after`` seconds, doubling per failure in a row up to ``max_retry_after``; so a dead server
costs training one short failed request now and then, not minutes. A call the server rejects for
good is dropped; a run that cannot even be started switches the queue off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from ssr.redact import redact

log = logging.getLogger(__name__)

BATCH_METRICS = 1000
# Errors that will not go away by retrying: the request itself is wrong, so drop it.
PERMANENT_CODES = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
    "PERMISSION_DENIED",
}


@dataclass
class Op:
    """One queued call: ``kind`` is start, params, metrics, tags, dataset, artifact, image,
    table or terminate."""

    kind: str
    payload: Any = None
    extra: Any = None
    metrics: list[Metric] = field(default_factory=list)


def is_permanent(exc: BaseException) -> bool:
    """True for errors a retry cannot fix (bad request, missing local file)."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, ValueError)):
        return True
    return isinstance(exc, MlflowException) and exc.error_code in PERMANENT_CODES


def short(exc: BaseException) -> str:
    """A redacted one-line description of ``exc``, at most about 200 characters."""
    text = redact(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= 200 else text[:200] + "..."


class OpQueue:
    """Sends :class:`Op` batches through ``apply`` in order, buffering while that fails.

    ``ready(op)`` says whether ``op`` may be sent now (nothing before the run exists);
    consecutive metric ops are sent together, up to :data:`BATCH_METRICS` values.
    """

    def __init__(
        self,
        apply: Callable[[list[Op]], None],
        ready: Callable[[Op], bool],
        retry_after: float = 30.0,
        max_retry_after: float = 300.0,
        max_buffered_metrics: int = 100_000,
    ) -> None:
        self.apply = apply
        self.ready = ready
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self.max_buffered_metrics = max_buffered_metrics
        self.lock = threading.RLock()
        self.disabled = False
        self._queue: deque[Op] = deque()
        self._buffered_metrics = 0
        self._failures = 0
        self._down_until = 0.0
        self.last_error = ""  # the latest failure, redacted (what an "unreachable" line shows)
        self.dropped = 0  # calls given up on by drop_all

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, op: Op, force: bool = False) -> None:
        """Queue ``op`` and send what can be sent (``force``: even while backing off)."""
        with self.lock:
            if self.disabled:
                return
            self._queue.append(op)
            if op.kind == "metrics":
                self._buffered_metrics += len(op.metrics)
                self._trim()
            self._flush(force)

    def pending(self, kind: str) -> bool:
        """True while a call of ``kind`` waits in the queue."""
        with self.lock:
            return any(op.kind == kind for op in self._queue)

    def drop_all(self) -> None:
        """Give up on whatever is still queued, with a warning."""
        with self.lock:
            self.dropped += len(self._queue)
            if self._queue:
                log.warning(
                    "tracking: mlflow unreachable at the end; %d buffered calls "
                    "(%d metric values) dropped",
                    len(self._queue),
                    self._buffered_metrics,
                )
            self._queue.clear()
            self._buffered_metrics = 0

    def _trim(self) -> None:
        dropped = 0
        while self._buffered_metrics > self.max_buffered_metrics:
            oldest = next((o for o in self._queue if o.kind == "metrics"), None)
            if oldest is None:
                break
            self._queue.remove(oldest)
            self._buffered_metrics -= len(oldest.metrics)
            dropped += len(oldest.metrics)
        if dropped:
            log.warning(
                "tracking: mlflow buffer full; dropped the %d oldest metric values", dropped
            )

    def _flush(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._down_until:
            return
        was_down = self._down_until > 0
        while self._queue:
            head = self._queue[0]
            if not self.ready(head):
                return
            batch = self._take_metrics() if head.kind == "metrics" else [head]
            try:
                self.apply(batch)
            except Exception as exc:
                self.last_error = short(exc)
                if head.kind == "start" and is_permanent(exc):
                    log.warning(
                        "tracking: mlflow run could not be started (%s); MLflow off for this run",
                        short(exc),
                    )
                    self.disabled = True
                    self._queue.clear()
                    self._buffered_metrics = 0
                    return
                if is_permanent(exc):
                    log.warning("tracking: mlflow rejected %s, dropped: %s", head.kind, short(exc))
                    self._pop(len(batch))
                    continue
                # wait longer after each failure in a row: a hung server costs little time
                delay = min(self.retry_after * 2**self._failures, self.max_retry_after)
                self._failures += 1
                self._down_until = time.monotonic() + delay
                log.warning(
                    "tracking: mlflow %s failed (%s); %d calls buffered, retry in %.0fs",
                    head.kind,
                    short(exc),
                    len(self._queue),
                    delay,
                )
                return
            self._pop(len(batch))
        if was_down:
            log.warning("tracking: mlflow reachable again; buffered calls sent")
        self._down_until = 0.0
        self._failures = 0

    def _take_metrics(self) -> list[Op]:
        batch: list[Op] = []
        count = 0
        for op in self._queue:
            if op.kind != "metrics" or (batch and count + len(op.metrics) > BATCH_METRICS):
                break
            batch.append(op)
            count += len(op.metrics)
        return batch

    def _pop(self, n: int) -> None:
        for _ in range(n):
            op = self._queue.popleft()
            if op.kind == "metrics":
                self._buffered_metrics -= len(op.metrics)
