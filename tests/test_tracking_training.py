"""A real tiny training logged to a real MLflow server (S3 artifacts) and to W&B offline."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers_data import tiny_overrides
from mlflow.tracking import MlflowClient
from mlflow_images import logged_images
from servers import start_mlflow, stop_mlflow
from wandb_offline import offline_runs

from ssr.cli import main
from ssr.config import load_config
from ssr.tracking import Tracker, open_tracker
from ssr.tracking.context import data_fingerprint
from ssr.training.checkpoint import load_checkpoint
from ssr.training.job import run_training

# real trainings; the outage test starts its own MLflow server
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

STEPS_PER_EPOCH = 6  # 4 classes x 12 utterances, batch 8


def _args(processed: Path, work: Path, uri: str, experiment: str, epochs: int) -> list[str]:
    return tiny_overrides(
        processed,
        work,
        training__num_epochs=epochs,
        training__log_interval=2,
        training__save_interval=100,
        tracking__mlflow__enabled=True,
        tracking__wandb__enabled=True,
        tracking__mlflow__tracking_uri=uri,
        tracking__mlflow__experiment=experiment,
    )


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_training_then_resume_log_one_continuous_run(processed, mlflow_server, tmp_path):
    experiment = f"train-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    assert main(["train", *_args(processed, work, mlflow_server.uri, experiment, 2)]) == 0
    first_ids = load_checkpoint(str(work / "checkpoints" / "last.pth"))["tracking"]
    assert set(first_ids) == {"mlflow", "wandb"}
    time.sleep(1.1)  # offline W&B run directories are named to the second
    resumed = _args(processed, work, mlflow_server.uri, experiment, 4)
    assert main(["train", *resumed, "--resume", "auto"]) == 0
    ids = load_checkpoint(str(work / "checkpoints" / "last.pth"))["tracking"]
    assert ids == first_ids

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(ids["mlflow"])
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.info.status == "FINISHED"
    fingerprint = json.loads((processed / "manifest.json").read_text())["fingerprint"]
    assert run.info.run_name.startswith(f"train-h16-l1-{fingerprint[:8]}-")
    assert run.data.params["model.hidden_size"] == "16"
    assert run.data.params["training.num_epochs"] == "2"  # params of the run's first start
    assert _steps(client, run.info.run_id, "val/loss") == [1, 2, 3, 4]
    assert _steps(client, run.info.run_id, "val/macro_f1") == [1, 2, 3, 4]
    assert _steps(client, run.info.run_id, "train/loss") == list(
        range(2, 4 * STEPS_PER_EPOCH + 1, 2)
    )
    tags = run.data.tags
    assert tags["data.fingerprint"] == fingerprint and tags["job"] == "train"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git_commit"])
    cms = [a.path for a in client.list_artifacts(run.info.run_id, "plots/val/confusion_matrix")]
    jsons = [f"plots/val/confusion_matrix/step-00000{e}.json" for e in (1, 2, 3, 4)]
    assert cms == jsons  # the counts per epoch; the plots are MLflow images with a step
    images = logged_images(client, run.info.run_id)
    assert [s for k, s in images if k == "val/confusion_matrix"] == [1, 2, 3, 4]
    assert [s for k, s in images if k == "val/predictions"] == [1, 2, 3, 4]
    cm = json.loads(
        Path(client.download_artifacts(run.info.run_id, jsons[-1], str(tmp_path))).read_text()
    )
    assert len(cm["labels"]) == 4 and sum(map(sum, cm["matrix"])) == 24  # every val utterance
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/best_model.pth"
    ]

    first, second = offline_runs(tmp_path, ids["wandb"])
    assert first.series("val/loss", "epoch")[-1][0] == 2
    assert [e for e, _ in second.series("val/loss", "epoch")] == [3, 4]
    assert [s for s, _ in second.series("train/loss", "global_step")] == list(
        range(2 * STEPS_PER_EPOCH + 2, 4 * STEPS_PER_EPOCH + 1, 2)
    )
    assert first.config["tags.data.fingerprint"] == fingerprint
    assert (f"best_model-{ids['wandb']}", "model") in second.artifacts
    assert first.exit_code == 0 and second.exit_code == 0

    # evaluating the best checkpoint is a run of its own, job "evaluate", metrics under test/
    best = str(work / "checkpoints" / "best_model.pth")
    assert main(["evaluate", *resumed, "--checkpoint", best, "--out", str(tmp_path / "ev")]) == 0
    (ev,) = [
        r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id
    ]
    assert ev.data.tags["job"] == "evaluate" and ev.info.status == "FINISHED"
    assert ev.data.tags["data.fingerprint"] == fingerprint
    assert ev.info.run_name.startswith(f"evaluate-h16-l1-{fingerprint[:8]}-")
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    accuracy, baseline = metrics["accuracy"], metrics["baseline"]["accuracy"]
    assert ev.data.metrics["test/accuracy"] == pytest.approx(accuracy)
    assert ev.data.metrics["test/baseline_accuracy"] == pytest.approx(baseline)
    ev_files = [
        a.path for a in client.list_artifacts(ev.info.run_id, "plots/test/confusion_matrix")
    ]
    assert [Path(p).suffix for p in ev_files] == [".json"]  # one matrix, and one plot:
    assert logged_images(client, ev.info.run_id) == [("test/confusion_matrix", 0)]
    assert {a.path for a in client.list_artifacts(ev.info.run_id, "evaluation")} == {
        "evaluation/metrics.json",
        "evaluation/predictions.json",
        "evaluation/report.html",
    }
    (wb_ev,) = [r for r in offline_runs(tmp_path) if r.config.get("tags.job") == "evaluate"]
    assert wb_ev.series("test/accuracy", "epoch") == [(0, pytest.approx(accuracy))]
    assert wb_ev.series("test/baseline_accuracy", "epoch") == [(0, pytest.approx(baseline))]
    assert len(wb_ev.series("test/confusion_matrix_table/_type", "epoch")) == 1


class _StopServerAfterEpoch:
    """Forwards to a real tracker; stops the MLflow server once ``epoch`` has been logged."""

    def __init__(self, inner: Tracker, server: Any, epoch: int) -> None:
        self.inner, self.server, self.epoch = inner, server, epoch

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.inner.log_metrics(metrics, step)
        if metrics.get("epoch") == self.epoch:
            stop_mlflow(self.server)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_training_survives_mlflow_server_stopping_mid_run(processed, s3_server, tmp_path):
    (tmp_path / "mlflow").mkdir()
    server = start_mlflow(tmp_path / "mlflow", s3_server)
    try:
        cfg = load_config(None, _args(processed, tmp_path / "work", server.uri, "outage", 3))
        tracker = open_tracker(cfg, fingerprint=data_fingerprint(str(processed)))
        ids = tracker.run_ids()
        start = time.monotonic()
        result = run_training(cfg, tracker=_StopServerAfterEpoch(tracker, server, epoch=1))
        took = time.monotonic() - start
        assert result.epochs_run == 3 and not result.stop_requested
        assert took < 120, f"training with the server down took {took:.0f}s"
        server.restart()  # finish() makes a last attempt and sends what was buffered
        tracker.finish()
        client = MlflowClient(server.uri)
        assert _steps(client, ids["mlflow"], "val/loss") == [1, 2, 3]
        assert client.get_run(ids["mlflow"]).info.status == "FINISHED"
        assert len(client.list_artifacts(ids["mlflow"], "checkpoints")) == 1
        (wb,) = offline_runs(tmp_path, ids["wandb"])
        assert [e for e, _ in wb.series("val/accuracy", "epoch")] == [1, 2, 3]
    finally:
        stop_mlflow(server)
