"""Tables (e.g. reference and hypothesis transcripts) reach MLflow (a real server, S3 artifacts)
and W&B (offline files read back), through the fan-out; the base and NullTracker ignore them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from wandb_offline import offline_runs

from ssr.config import load_config
from ssr.tracking import NullTracker, open_tracker
from ssr.tracking.mlflow_backend import MlflowTracker

COLUMNS = ["id", "reference", "hypothesis", "wer"]


def _rows(epoch: int) -> list[list[object]]:
    return [
        ["s1/000.npz", "the cat sat", "the cat sad", np.float32(1 / 3)],
        ["s1/001.npz", "a dog", "a dog" if epoch > 1 else "a dug", np.int64(0) * epoch],
    ]


def test_tables_reach_mlflow_and_wandb(mlflow_server, tmp_path, monkeypatch):
    cfg = load_config(
        None,
        [
            f"tracking.mlflow.tracking_uri={mlflow_server.uri}",
            f"tracking.mlflow.experiment=test-{uuid.uuid4().hex[:8]}",
        ],
    )
    tracker = open_tracker(cfg, job="train")
    ids = tracker.run_ids()
    assert set(ids) == {"mlflow", "wandb"}
    for epoch in (1, 2):
        tracker.log_metrics({"val/wer": 0.5 / epoch}, step=epoch)
        tracker.log_table("val/transcripts", COLUMNS, _rows(epoch), step=epoch)
    tracker.finish()

    client = MlflowClient(mlflow_server.uri)
    run_id = ids["mlflow"]
    files = [a.path for a in client.list_artifacts(run_id, "tables/val/transcripts")]
    assert files == [f"tables/val/transcripts/step-00000{e}.json" for e in (1, 2)]
    local = Path(client.download_artifacts(run_id, files[1], str(tmp_path / "dl")))
    table = json.loads(local.read_text())
    assert table["columns"] == COLUMNS
    assert table["data"][1] == ["s1/001.npz", "a dog", "a dog", 0]
    assert table["data"][0][3] == pytest.approx(1 / 3)
    logged = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert logged == [{"path": f, "type": "table"} for f in files]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # load_table searches with it
    loaded = client.load_table(
        client.get_run(run_id).info.experiment_id, files[0], run_ids=[run_id]
    )  # mlflow's own reader finds and parses it
    assert list(loaded.columns) == COLUMNS and list(loaded["hypothesis"]) == [
        "the cat sad",
        "a dug",
    ]

    (wb,) = offline_runs(tmp_path, ids["wandb"])
    assert wb.series("val/transcripts/_type", "epoch") == [(1, "table-file"), (2, "table-file")]
    assert wb.series("val/transcripts/nrows", "epoch") == [(1, 2), (2, 2)]
    (_, path), *_ = reversed(wb.series("val/transcripts/path", "epoch"))
    run_dir = next((tmp_path / "wandb").glob(f"offline-run-*-{ids['wandb']}"))
    written = json.loads((run_dir / "files" / path).read_text())
    assert written["columns"] == COLUMNS and written["data"][1][2] == "a dog"


def test_bad_tables_are_refused_or_ignored(mlflow_server, caplog):
    NullTracker().log_table("k", ["a"], [[1]], step=0)  # a no-op
    real = MlflowTracker(mlflow_server.uri, f"test-{uuid.uuid4().hex[:8]}", "tables")
    with pytest.raises(ValueError, match="row 0 has 1 values for 2 columns"):
        real.log_table("k", ["a", "b"], [[1]])
    with pytest.raises(ValueError, match="at least one column"):
        real.log_table("k", [], [])
    real.finish()
    cfg = load_config(None, ["tracking.mlflow.enabled=false"])
    fanout = open_tracker(cfg)  # W&B only: a bad table is a warning, never an error
    fanout.log_table("k", ["a", "b"], [[1]], step=1)
    fanout.finish()
    assert "wandb log_table failed (ValueError" in caplog.text
