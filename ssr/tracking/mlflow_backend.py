"""MLflow tracking backend: explicit run ids through ``MlflowClient``, buffered when unreachable.

Each :class:`~ssr.tracking.tracker.Tracker` call becomes an :class:`~ssr.tracking.mlflow_queue.Op`
in an :class:`~ssr.tracking.mlflow_queue.OpQueue` (which buffers while the server is down) and
is mapped onto ``MlflowClient`` calls here. Images use MLflow's ``log_image(key=, step=)``, so
the UI shows them with a step slider; tables are JSON artifacts in MLflow's table layout.
``finish`` makes a last attempt; whatever still cannot be sent then is dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from PIL import Image

from ssr.errors import TrackingError
from ssr.metrics import confusion_matrix
from ssr.plots import plot_confusion_matrix
from ssr.redact import redact
from ssr.tracking.lineage import DataSet
from ssr.tracking.mlflow_dataset import dataset_input
from ssr.tracking.mlflow_http import ARTIFACT_TIMEOUT, short_http
from ssr.tracking.mlflow_queue import BATCH_METRICS, Op, OpQueue
from ssr.tracking.store import ensure_experiment, open_client, safe_path
from ssr.tracking.tracker import RunSpec, Tracker, table_rows

__all__ = ["MlflowTracker"]

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 5000
MAX_KEY = 250
BATCH_PARAMS = 100
LOGGED_ARTIFACTS = "mlflow.loggedArtifacts"  # the tag listing a run's tables (mlflow's own)


def _key(name: str) -> str:
    return name[:MAX_KEY]


def image_key(key: str) -> str:
    """``key`` with the characters MLflow refuses in image keys replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", key) or "image"


class MlflowTracker(Tracker):
    """A :class:`~ssr.tracking.tracker.Tracker` writing one MLflow run through ``MlflowClient``."""

    @classmethod
    def open(cls, spec: RunSpec) -> MlflowTracker:
        """The run of ``spec.cfg.tracking.mlflow``; ``MLFLOW_TRACKING_URI`` wins over it."""
        mcfg = spec.cfg.tracking.mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI") or mcfg.tracking_uri
        tracker = cls(uri, mcfg.experiment, spec.name, spec.tags, resume_run_id=spec.resume_id)
        tracker.required = mcfg.required
        tracker.check_started()
        return tracker

    def check_started(self) -> None:
        """Say loudly when the run could not be started (server unreachable, or it refused):
        an error line in the job's log (a cluster step's log shows it), or, with
        ``tracking.mlflow.required``, a :class:`~ssr.errors.TrackingError`."""
        if not (self._queue.disabled or self._queue.pending("start")):
            return
        problem = self._queue.last_error or "no answer"
        where = f"MLflow at {redact(self.tracking_uri)}"
        if self.required:
            self._queue.drop_all()
            shutil.rmtree(self._staging, ignore_errors=True)
            self._finished = True
            raise TrackingError(
                f"{where} cannot be reached ({problem}) and tracking.mlflow.required is true"
            )
        log.error(
            "tracking: %s cannot be reached (%s): %s; the job goes on. On a cluster, check that "
            "this pod may reach it (MLflow's NetworkPolicy admits pods labelled "
            "ssr.io/role=pipeline or pipelines.kubeflow.org/v2_component=true); set "
            "tracking.mlflow.required=true to fail instead",
            where,
            problem,
            "MLflow is off for this run"
            if self._queue.disabled
            else "calls are buffered and retried, and lost if it stays unreachable",
        )

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
        self.client = open_client(tracking_uri)
        self._run_id: str | None = resume_run_id
        self._resumed = resume_run_id is not None
        self._queue = OpQueue(
            self._apply,
            lambda op: self._run_id is not None or op.kind == "start",
            retry_after=retry_after,
            max_retry_after=max_retry_after,
            max_buffered_metrics=max_buffered_metrics,
        )
        self._staging = Path(tempfile.mkdtemp(prefix="ssr-mlflow-"))
        self._seq = 0
        self._finished = False
        self.required: bool = False  # tracking.mlflow.required: lost calls fail the job at finish
        self._queue.submit(Op("start", dict(tags or {})))

    @property
    def buffered(self) -> int:
        """Number of queued calls not yet accepted by the server."""
        return len(self._queue)

    # -- Op -> MlflowClient -------------------------------------------------------------------

    def _apply(self, ops: list[Op]) -> None:
        op = ops[0]
        timeout = ARTIFACT_TIMEOUT if op.kind in ("artifact", "image", "table") else None
        with short_http(timeout):
            if op.kind == "metrics":
                self._log_metrics([m for o in ops for m in o.metrics])
            elif op.kind == "start":
                self._start(op.payload)
            elif op.kind == "params":
                self._log_params(op.payload)
            elif op.kind == "tags":
                self._set_tags(op.payload)
            elif op.kind == "dataset":  # MLflow keeps one input per data set and run
                self.client.log_inputs(self._run_id, datasets=[op.payload])
            elif op.kind == "artifact":
                self._log_artifact(Path(op.payload), op.extra)
            elif op.kind == "image":
                key, step = op.extra
                with Image.open(op.payload) as image:
                    self.client.log_image(self._run_id, image, key=key, step=step, synchronous=True)
            elif op.kind == "table":
                self._log_table(Path(op.payload), op.extra)
            elif op.kind == "terminate":
                self.client.set_terminated(self._run_id, status=op.payload)

    def _log_metrics(self, metrics: list[Metric]) -> None:
        for i in range(0, len(metrics), BATCH_METRICS):
            self.client.log_batch(self._run_id, metrics=metrics[i : i + BATCH_METRICS])

    def _set_tags(self, values: Mapping[str, Any]) -> None:
        tags = [RunTag(_key(k), redact(str(v))[:MAX_TAG_VALUE]) for k, v in values.items()]
        for i in range(0, len(tags), BATCH_PARAMS):
            self.client.log_batch(self._run_id, tags=tags[i : i + BATCH_PARAMS])

    def _log_artifact(self, path: Path, artifact_path: str | None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self._run_id, str(path), artifact_path)
            return
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file to log as an artifact")
        self.client.log_artifact(self._run_id, str(path), artifact_path)

    def _log_table(self, path: Path, artifact_dir: str) -> None:
        """Upload a staged table and list it in the run's ``mlflow.loggedArtifacts`` tag, as
        ``MlflowClient.log_table`` does, so ``load_table`` and the UI find it (while the tag
        fits: past :data:`MAX_TAG_VALUE` characters the table is only an artifact)."""
        self.client.log_artifact(self._run_id, str(path), artifact_dir)
        entry = {"path": f"{artifact_dir}/{path.name}", "type": "table"}
        logged = json.loads(self.client.get_run(self._run_id).data.tags.get(LOGGED_ARTIFACTS, "[]"))
        if entry not in logged:
            value = json.dumps([*logged, entry])
            if len(value) <= MAX_TAG_VALUE:
                self.client.set_tag(self._run_id, LOGGED_ARTIFACTS, value)

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

    def _stage(self, step: int | None, suffix: str) -> Path:
        """A fresh file in the staging folder: queued files must outlive the caller's."""
        self._seq += 1
        name = f"step-{step:06d}{suffix}" if step is not None else f"item-{self._seq:04d}{suffix}"
        folder = self._staging / f"{self._seq:06d}"
        folder.mkdir()
        return folder / name

    # -- Tracker ------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._queue.submit(Op("params", dict(params)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        values = [Metric(_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        if values:
            self._queue.submit(Op("metrics", metrics=values))

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None:
        """An image under ``key`` at ``step`` (MLflow's step slider; no step: step 0)."""
        src = Path(path)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: no such image")
        staged = self._stage(step, src.suffix)
        shutil.copyfile(src, staged)
        self._queue.submit(Op("image", str(staged), (image_key(key), step)))

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None:
        """The counts as ``plots/<key>/step-N.json`` and the plot as an image under ``key``."""
        matrix = confusion_matrix(y_true, y_pred, len(labels))
        as_json = self._stage(step, ".json")
        as_json.write_text(
            json.dumps(
                {"key": key, "step": step, "labels": list(labels), "matrix": matrix.tolist()}
            )
        )
        as_png = as_json.with_suffix(".png")
        title = key if step is None else f"{key} (step {step})"
        plot_confusion_matrix(matrix, labels, as_png, title=title)
        self._queue.submit(Op("artifact", str(as_json), f"plots/{safe_path(key)}"))
        self._queue.submit(Op("image", str(as_png), (image_key(key), step)))

    def log_table(
        self,
        key: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        step: int | None = None,
    ) -> None:
        """The table as ``tables/<key>/step-N.json`` in MLflow's table layout (``columns`` and
        ``data``, as ``MlflowClient.log_table`` writes it)."""
        data = table_rows(columns, rows)
        staged = self._stage(step, ".json")
        staged.write_text(json.dumps({"columns": list(columns), "data": data}))
        self._queue.submit(Op("table", str(staged), f"tables/{safe_path(key)}"))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such file to log as an artifact")
        self._queue.submit(Op("artifact", str(src), artifact_path))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if tags:
            self._queue.submit(Op("tags", dict(tags)))

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        context: str = "training",
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """A dataset input of the run (see :mod:`ssr.tracking.mlflow_dataset`), queued like
        every call, so an unreachable server gets it when it is back."""
        data = DataSet(name, digest, redact(source), context, dict(profile or {}))
        self._queue.submit(Op("dataset", dataset_input(data)))

    def run_ids(self) -> dict[str, str]:
        return {"mlflow": self._run_id} if self._run_id else {}

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run ended (FINISHED, FAILED or KILLED), after one last try to send the queue."""
        if self._finished:
            return
        self._finished = True
        with self._queue.lock:
            self._queue.submit(Op("terminate", status), force=True)
            self._queue.drop_all()
        shutil.rmtree(self._staging, ignore_errors=True)
        if self.required and self._queue.dropped:
            raise TrackingError(
                f"{self._queue.dropped} tracking calls never reached MLflow at "
                f"{redact(self.tracking_uri)} ({self._queue.last_error or 'unreachable'}) and "
                "tracking.mlflow.required is true"
            )
