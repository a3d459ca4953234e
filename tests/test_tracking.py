"""Tracking backends against a real MLflow server (S3 artifacts) and W&B offline run files."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers_data import make_processed, tiny_overrides
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from mlflow_images import logged_images
from servers import free_port, start_mlflow, stop_mlflow
from wandb_offline import offline_runs

from ssr.config import Config, load_config
from ssr.redact import redact
from ssr.tracking import NullTracker, open_tracker
from ssr.tracking.context import default_run_name, git_commit
from ssr.tracking.fanout import FanoutTracker
from ssr.tracking.mlflow_backend import MlflowTracker
from ssr.tracking.wandb_backend import resolve_mode

FINGERPRINT = "f1a2b3c4d5e6f7a8b9c0"
LABELS = ["yes", "no", "stop"]


def _cfg(uri: str, *extra: str) -> Config:
    return load_config(
        None,
        [
            f"tracking.mlflow.tracking_uri={uri}",
            f"tracking.mlflow.experiment=test-{uuid.uuid4().hex[:8]}",
            "model.hidden_size=16",
            "model.num_heads=2",
            "model.num_layers=1",
            *extra,
        ],
    )


def _png(path: Path) -> Path:
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(path)
    return path


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_one_run_reaches_mlflow_s3_and_wandb(mlflow_server, s3_server, tmp_path):
    cfg = _cfg(mlflow_server.uri)
    tracker = open_tracker(cfg, job="train", fingerprint=FINGERPRINT, device="cpu")
    ids = tracker.run_ids()
    assert set(ids) == {"mlflow", "wandb"}
    tracker.log_params(cfg.flat())
    for step in (0, 5, 10):
        tracker.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 1e-3}, step=step)
    for epoch in (1, 2):
        tracker.log_metrics(
            {"val/loss": 0.5 / epoch, "val/accuracy": 0.3 * epoch, "lr": 1e-3, "epoch": epoch},
            step=epoch,
        )
        tracker.log_confusion_matrix(
            [0, 1, 2, 2], [0, 1, 1, 2], LABELS, key="val/confusion_matrix", step=epoch
        )
    tracker.log_image(_png(tmp_path / "curves.png"), key="val/curves", step=2)
    (tmp_path / "best.pt").write_bytes(b"weights")
    tracker.log_artifact(tmp_path / "best.pt", "checkpoints")
    tracker.set_tags({"best_epoch": "2"})
    tracker.finish()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(f"train-h16-l1-{FINGERPRINT[:8]}-")
    assert run.data.params["model.hidden_size"] == "16"
    assert run.data.params["tracking.run_name"] == "None"
    assert _history(client, run.info.run_id, "train/loss") == [(0, 1.0), (5, 1 / 6), (10, 1 / 11)]
    assert [s for s, _ in _history(client, run.info.run_id, "val/accuracy")] == [1, 2]
    tags = run.data.tags
    assert tags["data.fingerprint"] == FINGERPRINT
    assert tags["job"] == "train" and tags["device"] == "cpu" and tags["best_epoch"] == "2"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])  # HEAD of this checkout
    assert tags["version.torch"] and tags["version.mlflow"] and tags["version.ssr"]

    cm_files = [
        a.path for a in client.list_artifacts(run.info.run_id, "plots/val/confusion_matrix")
    ]
    assert cm_files == [f"plots/val/confusion_matrix/step-00000{e}.json" for e in (1, 2)]
    local = Path(client.download_artifacts(run.info.run_id, cm_files[0], str(tmp_path / "dl")))
    cm = json.loads(local.read_text())
    assert cm["labels"] == LABELS and cm["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # plots go through MLflow's log_image(key, step): the UI shows them with a step slider
    assert logged_images(client, run.info.run_id) == [
        ("val/confusion_matrix", 1),
        ("val/confusion_matrix", 2),
        ("val/curves", 2),
    ]
    assert tags["mlflow.loggedImages"] == "True"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/best.pt"
    ]
    keys = s3_server.keys("mlflow-artifacts", contains=ids["mlflow"])
    assert any(k.endswith("confusion_matrix/step-000002.json") for k in keys)
    assert any(k.endswith("checkpoints/best.pt") for k in keys)

    (wb,) = offline_runs(tmp_path, ids["wandb"])
    assert wb.display_name == run.info.run_name
    assert wb.config["model.hidden_size"] == 16
    assert wb.config["tags.data.fingerprint"] == FINGERPRINT
    assert wb.series("train/loss", "global_step") == [(0, 1.0), (5, 1 / 6), (10, 1 / 11)]
    assert wb.series("val/loss", "epoch") == [(1, 0.5), (2, 0.25)]
    assert [e for e, _ in wb.series("val/confusion_matrix_table/_type", "epoch")] == [1, 2]
    assert (f"best-{ids['wandb']}", "model") in wb.artifacts
    assert wb.exit_code == 0


def test_resume_continues_the_same_runs(mlflow_server, tmp_path):
    cfg = _cfg(mlflow_server.uri)
    first = open_tracker(cfg, job="train", fingerprint=FINGERPRINT)
    first.log_params(cfg.flat())
    first.log_metrics({"val/loss": 0.9, "epoch": 1}, step=1)
    ids = first.run_ids()
    first.finish("KILLED")
    time.sleep(1.1)  # offline run directories are named to the second

    changed = cfg.model_copy(deep=True)
    changed.training.num_epochs = 7
    second = open_tracker(changed, job="train", resume_ids=ids, fingerprint=FINGERPRINT)
    assert second.run_ids() == ids
    second.log_params(changed.flat())  # a changed param is kept as it was, not an error
    second.log_metrics({"val/loss": 0.4, "epoch": 2}, step=2)
    second.finish()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(ids["mlflow"])
    assert run.info.status == "FINISHED"
    assert _history(client, ids["mlflow"], "val/loss") == [(1, 0.9), (2, 0.4)]
    assert run.data.params["training.num_epochs"] == "100"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    runs = offline_runs(tmp_path, ids["wandb"])
    assert len(runs) == 2 and runs[0].exit_code == 1 and runs[1].exit_code == 0
    assert runs[1].series("val/loss", "epoch") == [(2, 0.4)]


class _Broken:
    """A backend whose every call fails, as an unreachable service would."""

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise ConnectionError(f"{name}: service unreachable")

        return fail


def test_a_failing_backend_does_not_stop_the_others(mlflow_server, tmp_path, caplog):
    real = MlflowTracker(mlflow_server.uri, "test-fanout", "fanout", {"job": "train"})
    tracker = FanoutTracker({"broken": _Broken(), "mlflow": real})
    with caplog.at_level(logging.WARNING, logger="ssr.tracking"):
        for step in range(3):
            tracker.log_metrics({"train/loss": float(step)}, step=step)
        tracker.log_confusion_matrix([0, 5], [0, 1], LABELS, key="bad", step=0)  # label 5 invalid
        tracker.set_tags({"k": "v"})
        tracker.finish()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    run_id = real.run_ids()["mlflow"]
    client = MlflowClient(mlflow_server.uri)
    assert [s for s, _ in _history(client, run_id, "train/loss")] == [0, 1, 2]
    assert client.get_run(run_id).data.tags["k"] == "v"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert any("broken log_metrics failed" in w for w in warnings)
    assert any(
        "mlflow rejected artifact" in w or "mlflow log_confusion_matrix failed" in w
        for w in warnings
    )
    assert sum("broken" in w for w in warnings) == 1  # repeats of a failure streak are quiet


@pytest.mark.slow  # starts (and restarts) its own MLflow server
def test_mlflow_server_stopped_mid_run_buffers_then_flushes(s3_server, tmp_path):
    server = start_mlflow(tmp_path, s3_server)
    try:
        tracker = MlflowTracker(
            server.uri,
            "test-outage",
            "outage",
            {"job": "train"},
            retry_after=0.5,
            max_retry_after=0.5,
        )
        run_id = tracker.run_ids()["mlflow"]
        tracker.log_metrics({"val/loss": 1.0}, step=1)
        stop_mlflow(server)
        start = time.monotonic()
        for epoch in (2, 3):
            tracker.log_metrics({"val/loss": 1.0 / epoch}, step=epoch)
            tracker.log_confusion_matrix([0, 1], [0, 1], LABELS[:2], key="val/cm", step=epoch)
        assert time.monotonic() - start < 10, "a dead server must not stall training"
        assert tracker.buffered >= 3
        server.restart()
        time.sleep(0.6)
        tracker.log_metrics({"val/loss": 0.2}, step=4)
        assert tracker.buffered == 0
        tracker.finish()
        client = MlflowClient(server.uri)
        assert [s for s, _ in _history(client, run_id, "val/loss")] == [1, 2, 3, 4]
        assert len(client.list_artifacts(run_id, "plots/val/cm")) == 2  # the JSON counts
        assert logged_images(client, run_id) == [("val/cm", 2), ("val/cm", 3)]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        stop_mlflow(server)


def test_mlflow_down_from_the_start_leaves_wandb_working(tmp_path, caplog):
    cfg = _cfg(f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ssr.tracking"):
        tracker = open_tracker(cfg, job="evaluate", fingerprint=FINGERPRINT)
        for epoch in (1, 2):
            tracker.log_metrics({"test/accuracy": 0.5 * epoch}, step=epoch)
        tracker.finish()
    assert time.monotonic() - start < 30
    assert "mlflow" not in tracker.run_ids()
    assert any("mlflow unreachable at the end" in r.getMessage() for r in caplog.records)
    # Said once as an error, naming the server and what to check (a cluster step's log shows it).
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "cannot be reached" in error.getMessage() and "127.0.0.1" in error.getMessage()
    assert "ssr.io/role=pipeline" in error.getMessage()
    (wb,) = offline_runs(tmp_path, tracker.run_ids()["wandb"])
    assert wb.series("test/accuracy", "epoch") == [(1, 0.5), (2, 1.0)]
    assert wb.config["tags.job"] == "evaluate"


def test_required_mlflow_that_cannot_be_reached_fails_the_job(tmp_path):
    """tracking.mlflow.required: `ssr train` exits non-zero before training, in one line."""
    processed = make_processed(tmp_path / "processed", n_classes=2, per_class=4)
    uri = f"http://127.0.0.1:{free_port()}"
    args = tiny_overrides(processed, tmp_path, training__num_epochs=1)
    args += ["tracking.mlflow.enabled=true", f"tracking.mlflow.tracking_uri={uri}"]
    args += ["tracking.mlflow.required=true"]
    args += ["tracking.wandb.enabled=false"]
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ssr", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert f"MLflow at {uri} cannot be reached" in proc.stderr, proc.stderr[-2000:]
    assert "tracking.mlflow.required is true" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.pth")), "no training ran"


def test_required_mlflow_that_loses_calls_fails_at_the_end(mlflow_server, monkeypatch):
    """Started, then the server is gone (a real client of a closed port): the calls it could
    not send fail the job at finish when required; a failing job keeps its own error."""
    from mlflow.tracking import MlflowClient as Client

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = _cfg(mlflow_server.uri, "tracking.mlflow.required=true", "tracking.wandb.enabled=false")
    for status, raises in (("FINISHED", True), ("FAILED", False)):
        tracker = open_tracker(cfg, job="evaluate", fingerprint=FINGERPRINT)
        (backend,) = tracker.backends.values()
        backend.client = Client(f"http://127.0.0.1:{free_port()}")
        try:
            tracker.log_metrics({"test/accuracy": 0.5}, step=1)
            if raises:
                with pytest.raises(Exception, match="never reached MLflow.*required is true"):
                    tracker.finish(status)
            else:
                tracker.finish(status)
        finally:
            backend.client = Client(mlflow_server.uri)


def test_env_overrides_and_switches(mlflow_server, tmp_path, monkeypatch):
    assert isinstance(open_tracker(_cfg(mlflow_server.uri), rank=1), NullTracker)
    off = _cfg(mlflow_server.uri, "tracking.mlflow.enabled=false", "tracking.wandb.enabled=false")
    assert isinstance(open_tracker(off), NullTracker)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    cfg = _cfg("http://127.0.0.1:9", "tracking.wandb.mode=disabled", "tracking.run_name=my-run")
    monkeypatch.delenv("WANDB_MODE")
    tracker = open_tracker(cfg)
    assert set(tracker.run_ids()) == {"mlflow"}
    tracker.finish()
    run = MlflowClient(mlflow_server.uri).get_run(tracker.run_ids()["mlflow"])
    assert run.info.run_name == "my-run" and run.info.status == "FINISHED"

    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("online") == "offline"


def test_run_name_and_git_commit_fallback(monkeypatch):
    cfg = load_config(None, ["model.hidden_size=64", "model.num_layers=3"])
    name = default_run_name(cfg, "train", FINGERPRINT)
    assert name.startswith(f"train-h64-l3-{FINGERPRINT[:8]}-") and len(name.split("-")) == 6
    assert default_run_name(cfg, "evaluate").startswith("evaluate-h64-l3-2")
    monkeypatch.setenv("PATH", "")  # no git: the commit comes from the image's variable
    monkeypatch.setenv("SSR_GIT_COMMIT", "abc123")
    assert git_commit() == "abc123"
    monkeypatch.delenv("SSR_GIT_COMMIT")
    assert git_commit() == "unknown"


def test_confusion_matrix_rejects_bad_labels():
    from ssr.evaluation import confusion_matrix

    assert confusion_matrix([0, 1, 1], [1, 1, 0], 2).tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)
    assert np.array_equal(confusion_matrix([], [], 3), np.zeros((3, 3)))


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("http://alice:s3cret@host:5000/x", "http://alice:***@host:5000/x"),
        ("see https://tok3n@host and s3://bucket/k", "see https://***@host and s3://bucket/k"),
        ("postgresql://u:p%40ss@db/mlflow", "postgresql://u:***@db/mlflow"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("mail me at a@b.c", "mail me at a@b.c"),
    ],
)
def test_redact(text: str, clean: str) -> None:
    assert redact(text) == clean


def test_password_in_tracking_uri_reaches_no_param_tag_or_config(mlflow_server, tmp_path):
    secret_uri = mlflow_server.uri.replace("http://", "http://alice:s3cret@")
    cfg = _cfg(secret_uri, "storage.endpoint_url=http://key:s3cret@127.0.0.1:9")
    tracker = open_tracker(cfg, job="train", fingerprint=FINGERPRINT)
    ids = tracker.run_ids()
    assert set(ids) == {"mlflow", "wandb"}
    tracker.log_params(cfg.flat())
    tracker.set_tags({"source": secret_uri})
    tracker.finish()
    run = MlflowClient(mlflow_server.uri).get_run(ids["mlflow"])
    assert run.data.params["tracking.mlflow.tracking_uri"].startswith("http://alice:***@")
    assert run.data.params["storage.endpoint_url"] == "http://key:***@127.0.0.1:9"
    assert run.data.tags["source"].startswith("http://alice:***@")
    values = [*run.data.params.values(), *run.data.tags.values()]
    assert values and not [v for v in values if "s3cret" in v]
    (wb,) = offline_runs(tmp_path, ids["wandb"])
    assert wb.config["tracking.mlflow.tracking_uri"].startswith("http://alice:***@")
    assert "s3cret" not in json.dumps(wb.config)


def test_password_never_reaches_stderr_when_mlflow_is_down(tmp_path):
    processed = make_processed(tmp_path / "processed", n_classes=2, per_class=4)
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    args = tiny_overrides(processed, tmp_path, training__num_epochs=1)
    args += ["tracking.mlflow.enabled=true", f"tracking.mlflow.tracking_uri={uri}"]
    args += ["tracking.wandb.enabled=false"]
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ssr", "train", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mlflow" in proc.stderr and "alice:***@127.0.0.1" in proc.stderr, proc.stderr[-2000:]
    assert "s3cret" not in proc.stderr + proc.stdout
