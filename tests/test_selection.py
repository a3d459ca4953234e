"""Model selection over validation sessions: the session-mean loss the trainer selects on,
results put back in utterance order after DDP sharding, and the early-best flag in the result,
``training_summary.json``, the run's tags and the log."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_data import make_processed, tiny_overrides
from mlflow.utils.validation import _validate_metric_name

from ssr.cli import main
from ssr.config import load_config
from ssr.data.processed import SplitArrays, write_processed
from ssr.data.sessions import metric_keys
from ssr.evaluation import predict
from ssr.tracking.base import NullTracker
from ssr.training.checkpoint import load_checkpoint, save_checkpoint
from ssr.training.trainer import Trainer
from ssr.training.validation import in_dataset_order

pytestmark = pytest.mark.usefixtures("one_thread")


class TagTracker(NullTracker):
    """Keeps the tags and metrics a run logs."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.metrics: list[dict[str, float]] = []

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append(dict(metrics))


class KeepsValidation(Trainer):
    """Real training; remembers the last validate() result."""

    last: dict[str, Any]

    def validate(self) -> dict[str, Any]:
        self.last = super().validate()
        return self.last


def rewrite_val(
    src: Path,
    dst: Path,
    labels: Callable[[np.ndarray], np.ndarray] | None = None,
    ids: Callable[[list[str]], list[str]] | None = None,
) -> Path:
    """A copy of the processed data set ``src`` whose validation labels and/or ids are changed."""
    manifest = json.loads((src / "manifest.json").read_text())
    for key in ("format_version", "feature_hash", "splits"):
        manifest.pop(key, None)
    splits = {}
    for name in ("train", "val", "test"):
        index = np.load(src / f"{name}_index.npy").copy()
        names = json.loads((src / f"{name}_ids.json").read_text())
        if name == "val":
            index[:, 2] = labels(index[:, 2]) if labels else index[:, 2]
            names = ids(names) if ids else names
        splits[name] = SplitArrays(np.load(src / f"{name}_features.npy"), index, names)
    return write_processed(dst, manifest, splits)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_processed(tmp_path_factory.mktemp("data") / "processed")


@pytest.fixture(scope="module")
def mislabelled(source: Path) -> Path:
    """Validation labels shifted by one class: the better the model learns the training
    distribution, the worse its validation loss, so the first epoch is the best."""
    return rewrite_val(source, source.parent / "mislabelled", labels=lambda y: (y + 1) % 4)


@pytest.fixture(scope="module")
def two_sessions(source: Path) -> Path:
    """24 validation utterances: the first 20 recorded in session sessA, the last 4 in sessB."""

    def ids(names: list[str]) -> list[str]:
        return [f"val/{'sessA' if i < 20 else 'sessB'}/{Path(n).name}" for i, n in enumerate(names)]

    return rewrite_val(source, source.parent / "sessions", ids=ids)


def test_validation_selects_on_the_mean_of_session_means(
    two_sessions: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(two_sessions, tmp_path, training__num_epochs=1)
    tracker = TagTracker()
    trainer = KeepsValidation(load_config(None, overrides), tracker=tracker)
    result = trainer.fit()
    val = trainer.last

    # the per-utterance losses, recomputed over the whole set in order, grouped by hand
    out = predict(trainer.model, trainer.val_loader, trainer.device)
    a, b = out["loss"][:20].mean(), out["loss"][20:].mean()
    assert [(s.name, s.count) for s in val["sessions"]] == [("sessA", 20), ("sessB", 4)]
    assert [s.loss for s in val["sessions"]] == pytest.approx([a, b], rel=1e-5)
    assert val["session_mean_loss"] == pytest.approx((a + b) / 2, rel=1e-5)
    assert val["loss"] == pytest.approx((20 * a + 4 * b) / 24, rel=1e-5)
    assert abs(val["session_mean_loss"] - val["loss"]) > 1e-4  # unequal sizes: not the same
    accuracies = {s.name: s.accuracy for s in val["sessions"]}
    assert accuracies["sessA"] == pytest.approx(float((out["true"] == out["pred"])[:20].mean()))

    # selection, history and tracking use the session mean
    assert result.best_val_loss == pytest.approx(val["session_mean_loss"])
    assert result.history[0]["val_session_mean_loss"] == pytest.approx(val["session_mean_loss"])
    assert result.history[0]["val_worst_session_accuracy"] == min(accuracies.values())
    (logged,) = [m for m in tracker.metrics if "val/loss" in m]
    assert logged["val/session_mean_loss"] == pytest.approx(val["session_mean_loss"])
    assert logged["val/session/sessB/accuracy"] == accuracies["sessB"]
    for name in logged:
        _validate_metric_name(name)
    summary = json.loads((tmp_path / "outputs" / "training_summary.json").read_text())
    assert summary["val_sessions"] == ["sessA", "sessB"]


def test_sharded_results_go_back_to_their_utterances() -> None:
    n = 7
    loss = np.arange(n, dtype=np.float32) * 10  # row i belongs to utterance i
    shards = [np.arange(r, n, 3) for r in range(3)]  # the loaders' shares of 3 ranks
    parts = [{"index": s, "loss": loss[s]} for s in shards]
    merged = in_dataset_order(parts, n)
    assert merged["index"].tolist() == list(range(n))
    assert merged["loss"].tolist() == loss.tolist()
    with pytest.raises(Exception, match="each of the 8 validation utterances once"):
        in_dataset_order(parts, n + 1)


def test_session_names_become_valid_metric_names() -> None:
    names = ["session 01", "session_01", ".", "..", "s:1/x", "é"]
    keys = metric_keys(names)
    assert len(set(keys.values())) == len(names)
    for key in keys.values():
        _validate_metric_name(f"val/session/{key}/accuracy")


def test_an_early_best_epoch_is_flagged(
    mislabelled: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tiny_overrides(
        mislabelled,
        tmp_path,
        training__num_epochs=10,
        training__patience=2,
        training__learning_rate=0.01,
        training__viz_interval=100,
    )
    tracker = TagTracker()
    result = Trainer(load_config(None, overrides), tracker=tracker).fit()
    assert result.best_epoch == 1 and result.stopped_early and result.epochs_run == 3
    assert result.early_best
    assert tracker.tags["selection.best_epoch"] == "1"
    assert tracker.tags["selection.early_best"] == "true"
    summary = json.loads((tmp_path / "outputs" / "training_summary.json").read_text())
    assert summary == {
        "best_epoch": 1,
        "best_val_loss": pytest.approx(result.best_val_loss),
        "selection_metric": "val/session_mean_loss",
        "epochs_run": 3,
        "num_epochs": 10,
        "stopped_early": True,
        "stop_requested": False,
        "early_best": True,
        "val_sessions": ["val"],
    }

    # ssr train ends with a warning saying so
    caplog.set_level(logging.INFO)
    assert main(["train", *overrides, "--overwrite"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith("early best: the best epoch (1 of training.num_epochs=10)") for m in warnings
    )


def test_a_later_best_epoch_is_not_flagged_and_old_checkpoints_resume(
    source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # with 4 epochs only epoch 1 is "early"; the learnable set improves after it
    overrides = tiny_overrides(
        source, tmp_path, training__num_epochs=4, training__learning_rate=0.01
    )
    caplog.set_level(logging.INFO)
    assert main(["train", *overrides, "training.num_epochs=2"]) == 0
    # a checkpoint written before the session metrics: history rows without them
    state = load_checkpoint(str(tmp_path / "checkpoints" / "last.pth"))
    for row in state["history"]:
        del row["val_session_mean_loss"], row["val_worst_session_accuracy"]
    old = save_checkpoint(state, str(tmp_path), "old.pth")
    assert main(["train", *overrides, "--resume", old]) == 0
    assert not any("early best" in r.getMessage() for r in caplog.records)
    summary = json.loads((tmp_path / "outputs" / "training_summary.json").read_text())
    assert summary["early_best"] is False and summary["best_epoch"] >= 2
    assert summary["epochs_run"] == 4 and summary["num_epochs"] == 4
    history = load_checkpoint(str(tmp_path / "checkpoints" / "last.pth"))["history"]
    assert [sorted(row) == sorted(history[-1]) for row in history] == [False, False, True, True]
