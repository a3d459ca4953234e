"""`ssr predict` from a folder without the local MLflow store refuses; it creates no store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssr.cli import main


@pytest.fixture(autouse=True)
def _restore_mlflow_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """predict sets mlflow's process-wide tracking URI; put it back for the tests after these."""
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)


def test_predict_without_a_local_store_names_it_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # the relative default a user gets, stated explicitly: other tests in this process may have
    # pointed mlflow's global tracking URI at a server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    recording = tmp_path / "rec.npy"
    np.save(recording, np.zeros((2000, 8), dtype=np.float32))
    code = main(["predict", "--model", "models:/ssr-emg@champion", str(recording)])
    err = capsys.readouterr().err
    assert code == 2
    assert "no MLflow database" in err and str(tmp_path / "mlflow.db") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.npy"]


def test_predict_of_a_missing_model_names_the_tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssr.tracking.store import open_client

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    open_client(uri)  # a store that exists but holds no model
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    recording = tmp_path / "rec.npy"
    np.save(recording, np.zeros((2000, 8), dtype=np.float32))
    code = main(["predict", "--model", "models:/no-such-model@champion", str(recording)])
    err = capsys.readouterr().err
    assert code == 2
    assert "no-such-model" in err and f"tracking URI {uri}" in err
