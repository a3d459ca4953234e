"""Shared fixtures: real servers per session, tiny configs, isolated tracking defaults."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import (  # noqa: E402
    MlflowServer,
    S3Server,
    start_mlflow,
    start_s3,
    stop,
    stop_mlflow,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests off the user's trackers and credentials: W&B offline in tmp, no real URIs."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def one_thread() -> None:
    """One torch thread: tiny models on 2 shared cores run several times faster than with two."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny learnable processed data set (4 classes), shared by a test module."""
    from helpers_data import make_processed

    return make_processed(tmp_path_factory.mktemp("data") / "processed")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto) on loopback, shared by the session."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    stop(server.proc)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point boto3 (through the usual AWS variables) at the loopback S3 server."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server
) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` with a SQLite store and S3 artifacts, shared by the session."""
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"), s3_server)
    yield server
    stop_mlflow(server)


def pytest_report_header(config: pytest.Config) -> str:
    return f"ssr tests; CI={os.environ.get('CI', '')}"


@pytest.fixture(scope="session")
def sentence_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny sentence data set (tests/helpers_sentences.py) and a tiny CTC model trained on
    it for 15 epochs (seconds on one thread), shared by the session: ``root`` (raw splits),
    ``processed``, ``checkpoints`` (best_model.pth, last.pth) and ``outputs``."""
    import torch
    from helpers_sentences import SENTENCE_EPOCHS, TRAIN_OVERRIDES, data_overrides, make_sentences

    from ssr.cli import main

    root = tmp_path_factory.mktemp("sentences")
    processed = make_sentences(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(
            [
                "train",
                *data_overrides(root),
                *TRAIN_OVERRIDES,
                f"training.num_epochs={SENTENCE_EPOCHS}",
                f"training.checkpoint_dir={root / 'checkpoints'}",
                f"training.output_dir={root / 'outputs'}",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return {
        "root": root,
        "processed": processed,
        "checkpoints": root / "checkpoints",
        "outputs": root / "outputs",
    }
