"""MLflow tracking backend: explicit run ids through ``MlflowClient``, buffered when unreachable.

Every call is queued and the queue is sent at once, in order. When the server cannot be reached
the queue is kept (metrics keep their original step and time) and the next send is tried after
``retry_after`` seconds, doubling per failure in a row up to ``max_retry_after``; so a dead server
costs training one short failed request now and then, not minutes.
``finish`` makes a last attempt; whatever still cannot be sent then is dropped with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ssr.metrics import confusion_matrix
from ssr.plots import plot_confusion_matrix
from ssr.redact import redact
from ssr.tracking.store import open_client, sqlite_path

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 5000
MAX_KEY = 250
BATCH_PARAMS = 100
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
# Short HTTP retries/timeouts for our calls; a user's own MLFLOW_HTTP_* settings win.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
ARTIFACT_TIMEOUT = "300"
_env_lock = threading.Lock()


@contextlib.contextmanager
def _short_http(timeout: str | None = None) -> Iterator[None]:
    """Lower MLflow's HTTP retries for the calls inside (read from the environment per request)."""
    wanted = dict(HTTP_ENV)
    if timeout:
        wanted["MLFLOW_HTTP_REQUEST_TIMEOUT"] = timeout
    with _env_lock:
        changed = {k: v for k, v in wanted.items() if k not in os.environ}
        os.environ.update(changed)
        try:
            yield
        finally:
            for key in changed:
                os.environ.pop(key, None)


def is_permanent(exc: BaseException) -> bool:
    """True for errors a retry cannot fix (bad request, missing local file)."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, ValueError)):
        return True
    return isinstance(exc, MlflowException) and exc.error_code in PERMANENT_CODES


def _key(name: str) -> str:
    return name[:MAX_KEY]


def _safe_path(key: str) -> str:
    """An artifact sub-path from a key: ``val/confusion matrix`` -> ``val/confusion_matrix``."""
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "_", p) for p in key.split("/")]
    parts = [p for p in parts if p not in ("", ".", "..")]
    return "/".join(parts) or "item"


def local_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a ``sqlite:///`` store go beside the database file, not in ``./mlruns``
    of whatever folder the run happened to start in; None for other stores (server default)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    db = path.resolve()
    return (db.parent / "mlruns" / _safe_path(experiment)).as_uri()


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (race-safe) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = local_artifact_location(str(client.tracking_uri), name)
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


@dataclass
class _Op:
    kind: str  # start, params, metrics, tags, artifact, terminate
    payload: Any = None
    extra: Any = None
    metrics: list[Metric] = field(default_factory=list)


class MlflowTracker:
    """A :class:`~ssr.tracking.base.Tracker` writing one MLflow run through ``MlflowClient``."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        resume_run_id: str | None = None,
        retry_after: float = 30.0,
        max_retry_after: float = 300.0,
        max_buffered_metrics: int = 100_000,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self._failures = 0
        self.max_buffered_metrics = max_buffered_metrics
        self.client = open_client(tracking_uri)
        self._run_id: str | None = resume_run_id
        self._resumed = resume_run_id is not None
        self._queue: deque[_Op] = deque()
        self._buffered_metrics = 0
        self._down_until = 0.0
        self._lock = threading.RLock()
        self._staging = Path(tempfile.mkdtemp(prefix="ssr-mlflow-"))
        self._seq = 0
        self._finished = False
        self._disabled = False
        self._submit(_Op("start", dict(tags or {})))

    # -- queue --------------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Number of queued calls not yet accepted by the server."""
        return len(self._queue)

    def _submit(self, op: _Op, force: bool = False) -> None:
        with self._lock:
            if self._disabled:
                return
            self._queue.append(op)
            if op.kind == "metrics":
                self._buffered_metrics += len(op.metrics)
                self._trim()
            self._flush(force)

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
            if self._run_id is None and head.kind != "start":
                # the run could not be created yet; it is first in the queue
                return
            batch = self._take_metrics() if head.kind == "metrics" else [head]
            try:
                self._apply(batch)
            except Exception as exc:
                if head.kind == "start" and is_permanent(exc):
                    log.warning(
                        "tracking: mlflow run could not be started (%s); MLflow off for this run",
                        _short(exc),
                    )
                    self._disabled = True
                    self._queue.clear()
                    self._buffered_metrics = 0
                    return
                if is_permanent(exc):
                    log.warning("tracking: mlflow rejected %s, dropped: %s", head.kind, _short(exc))
                    self._pop(len(batch))
                    continue
                # wait longer after each failure in a row: a hung server costs little time
                delay = min(self.retry_after * 2**self._failures, self.max_retry_after)
                self._failures += 1
                self._down_until = time.monotonic() + delay
                log.warning(
                    "tracking: mlflow %s failed (%s); %d calls buffered, retry in %.0fs",
                    head.kind,
                    _short(exc),
                    len(self._queue),
                    delay,
                )
                return
            self._pop(len(batch))
        if was_down:
            log.warning("tracking: mlflow reachable again; buffered calls sent")
        self._down_until = 0.0
        self._failures = 0

    def _take_metrics(self) -> list[_Op]:
        batch, count = [], 0
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

    def _apply(self, ops: list[_Op]) -> None:
        op = ops[0]
        timeout = ARTIFACT_TIMEOUT if op.kind == "artifact" else None
        with _short_http(timeout):
            if op.kind == "metrics":
                metrics = [m for o in ops for m in o.metrics]
                for i in range(0, len(metrics), BATCH_METRICS):
                    self.client.log_batch(self._run_id, metrics=metrics[i : i + BATCH_METRICS])
            elif op.kind == "start":
                self._start(op.payload)
            elif op.kind == "params":
                self._log_params(op.payload)
            elif op.kind == "tags":
                tags = [
                    RunTag(_key(k), redact(str(v))[:MAX_TAG_VALUE]) for k, v in op.payload.items()
                ]
                for i in range(0, len(tags), BATCH_PARAMS):
                    self.client.log_batch(self._run_id, tags=tags[i : i + BATCH_PARAMS])
            elif op.kind == "artifact":
                path = Path(op.payload)
                if path.is_dir():
                    self.client.log_artifacts(self._run_id, str(path), op.extra)
                else:
                    if not path.is_file():
                        raise FileNotFoundError(f"{path}: no such file to log as an artifact")
                    self.client.log_artifact(self._run_id, str(path), op.extra)
            elif op.kind == "terminate":
                self.client.set_terminated(self._run_id, status=op.payload)

    def _start(self, tags: Mapping[str, str]) -> None:
        run_tags = {_key(k): redact(str(v))[:MAX_TAG_VALUE] for k, v in tags.items()}
        if self._run_id is not None:
            try:
                run = self.client.get_run(self._run_id)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning(
                    "tracking: mlflow run %s not found at %s; starting a new run",
                    self._run_id,
                    redact(self.tracking_uri),
                )
                self._run_id = None
                self._resumed = False
            else:
                if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
                    self.client.update_run(self._run_id, status="RUNNING")
                self.client.log_batch(
                    self._run_id, tags=[RunTag(k, v) for k, v in run_tags.items()]
                )
                log.info("tracking: mlflow resumes run %s", self._run_id)
                return
        exp_id = ensure_experiment(self.client, self.experiment)
        run = self.client.create_run(exp_id, tags=run_tags, run_name=self.run_name)
        self._run_id = run.info.run_id
        log.info(
            "tracking: mlflow run %s (%s) in experiment %r at %s",
            self._run_id,
            self.run_name,
            self.experiment,
            redact(self.tracking_uri),
        )

    def _log_params(self, params: Mapping[str, Any]) -> None:
        values = {_key(k): redact(str(v))[:MAX_PARAM_VALUE] for k, v in params.items()}
        if self._resumed:
            # params are immutable in MLflow: send only new keys, report changed ones
            existing = self.client.get_run(self._run_id).data.params
            changed = sorted(k for k, v in values.items() if k in existing and existing[k] != v)
            if changed:
                log.warning(
                    "tracking: resumed mlflow run keeps its original params for %s",
                    ", ".join(changed),
                )
            values = {k: v for k, v in values.items() if k not in existing}
        items = [Param(k, v) for k, v in values.items()]
        for i in range(0, len(items), BATCH_PARAMS):
            self.client.log_batch(self._run_id, params=items[i : i + BATCH_PARAMS])

    def _stage(self, key: str, step: int | None, suffix: str) -> Path:
        self._seq += 1
        name = f"step-{step:06d}{suffix}" if step is not None else f"item-{self._seq:04d}{suffix}"
        folder = self._staging / f"{self._seq:06d}"
        folder.mkdir()
        return folder / name

    # -- Tracker ------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._submit(_Op("params", dict(params)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        values = [Metric(_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        if values:
            self._submit(_Op("metrics", metrics=values))

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None:
        src = Path(path)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no such image")
        staged = self._stage(key, step, src.suffix)
        shutil.copyfile(src, staged)
        self._submit(_Op("artifact", str(staged), f"plots/{_safe_path(key)}"))

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None:
        matrix = confusion_matrix(y_true, y_pred, len(labels))
        target = f"plots/{_safe_path(key)}"
        as_json = self._stage(key, step, ".json")
        as_json.write_text(
            json.dumps(
                {"key": key, "step": step, "labels": list(labels), "matrix": matrix.tolist()}
            )
        )
        as_png = as_json.with_suffix(".png")
        title = key if step is None else f"{key} (step {step})"
        plot_confusion_matrix(matrix, labels, as_png, title=title)
        self._submit(_Op("artifact", str(as_json), target))
        self._submit(_Op("artifact", str(as_png), target))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such file to log as an artifact")
        self._submit(_Op("artifact", str(src), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if tags:
            self._submit(_Op("tags", dict(tags)))

    def run_ids(self) -> dict[str, str]:
        return {"mlflow": self._run_id} if self._run_id else {}

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run ended (FINISHED, FAILED or KILLED), after one last try to send the queue."""
        if self._finished:
            return
        self._finished = True
        with self._lock:
            self._submit(_Op("terminate", status), force=True)
            if self._queue:
                log.warning(
                    "tracking: mlflow unreachable at the end; %d buffered calls "
                    "(%d metric values) dropped",
                    len(self._queue),
                    self._buffered_metrics,
                )
                self._queue.clear()
                self._buffered_metrics = 0
        shutil.rmtree(self._staging, ignore_errors=True)


def _short(exc: BaseException) -> str:
    text = redact(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= 200 else text[:200] + "..."
