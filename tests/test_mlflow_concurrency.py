"""Six ``ssr train`` processes started together against one new local SQLite MLflow store."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_data import make_processed, tiny_overrides
from mlflow.tracking import MlflowClient

from ssr.tracking.store import require_store

RUNS = 6
METRICS = {"train/loss", "train/lr", "val/loss", "val/accuracy", "val/macro_f1", "lr", "epoch"}


@pytest.mark.slow  # six Python processes importing torch and MLflow
def test_six_concurrent_trainings_share_a_new_sqlite_store(tmp_path: Path) -> None:
    processed = make_processed(tmp_path / "processed", n_classes=2, per_class=4)
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    procs = []
    for i in range(RUNS):
        work = tmp_path / f"run{i}"
        args = tiny_overrides(processed, work, training__num_epochs=1, training__log_interval=1)
        args += ["tracking.mlflow.enabled=true", "tracking.wandb.enabled=false"]
        args += ["tracking.mlflow.experiment=sweep", f"tracking.run_name=run{i}"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ssr", "train", *args],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert "could not be opened" not in err and "failed" not in err, err[-3000:]

    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert "experiments" in tables and not [t for t in tables if t.startswith("_alembic_tmp")]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"run{i}" for i in range(RUNS)]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert set(run.data.metrics) >= METRICS, (run.info.run_name, sorted(run.data.metrics))
        assert run.data.params["training.num_epochs"] == "1"


def test_a_missing_local_store_is_named_not_created(tmp_path: Path) -> None:
    from ssr.errors import TrackingError

    db = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(TrackingError, match=f"no MLflow database at {db}"):
        require_store(f"sqlite:///{db}")
    assert not db.exists() and not db.parent.exists()


def test_promote_names_a_missing_local_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssr.cli import main

    db = tmp_path / "elsewhere" / "mlflow.db"
    assert main(["promote", f"tracking.mlflow.tracking_uri=sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert f"sqlite:///{db}: no MLflow database at {db}" in err
    assert not db.exists()
