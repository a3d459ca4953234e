"""The tracking layer without servers: adding a backend, and MLflow HTTP retries kept short only
inside this package's own MLflow calls."""

from __future__ import annotations

import os
import threading

from mlflow.utils import rest_utils

from ssr.config import load_config
from ssr.tracking import Tracker, base, open_tracker
from ssr.tracking.fanout import FanoutTracker
from ssr.tracking.mlflow_http import short_http
from ssr.tracking.tracker import RunSpec


def effective(setting: str) -> object:
    """The value of an MLflow HTTP setting as ``rest_utils.http_request`` reads it."""
    return getattr(rest_utils, setting).get()


def test_short_mlflow_http_retries_stay_inside_our_calls(monkeypatch):
    name = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    monkeypatch.delenv(name, raising=False)
    default = effective(name)
    seen: dict[str, object] = {}
    with short_http():
        assert effective(name) == 1 and name not in os.environ  # no process-wide edit
        other = threading.Thread(target=lambda: seen.update(other=effective(name)))
        other.start()
        other.join()
        with short_http(timeout="300"):
            assert effective("MLFLOW_HTTP_REQUEST_TIMEOUT") == 300
        assert effective("MLFLOW_HTTP_REQUEST_TIMEOUT") == 15
    assert seen["other"] == default and effective(name) == default  # other threads, and after
    monkeypatch.setenv(name, "0")
    with short_http():
        assert effective(name) == 0  # the user's own setting wins


class _Recording(Tracker):
    """A backend in one class: it overrides what it records; the rest are the base's no-ops."""

    specs: list[RunSpec] = []

    @classmethod
    def open(cls, spec: RunSpec) -> _Recording:
        cls.specs.append(spec)
        return cls()

    def log_params(self, params) -> None:
        pass

    def log_metrics(self, metrics, step) -> None:
        self.last = (dict(metrics), step)

    def run_ids(self) -> dict[str, str]:
        return {"recording": "r1"}


def test_a_backend_is_one_class_and_one_table_entry(monkeypatch):
    monkeypatch.setattr(base, "BACKENDS", {"wandb": f"{__name__}:_Recording"})
    cfg = load_config(None, ["tracking.mlflow.enabled=false", "tracking.run_name=r"])
    tracker = open_tracker(cfg, job="evaluate", resume_ids={"wandb": "old"})
    assert isinstance(tracker, FanoutTracker) and tracker.run_ids() == {"recording": "r1"}
    spec = _Recording.specs[-1]
    assert (spec.job, spec.name, spec.resume_id, spec.tags["job"]) == (
        "evaluate",
        "r",
        "old",
        "evaluate",
    )
    tracker.log_metrics({"test/accuracy": 0.5}, step=0)
    tracker.log_image("no-such.png", key="k")  # the base's no-ops: nothing to do, no error
    tracker.set_tags({"a": "b"})
    tracker.finish()
    assert tracker.backends["wandb"].last == ({"test/accuracy": 0.5}, 0)
