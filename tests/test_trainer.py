"""The training loop: early stopping, LR schedule, label smoothing, clipping, checkpoints,
exact resume, tracking calls and learning a learnable data set."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers_data import tiny_overrides

from ssr.cli import main
from ssr.config import load_config
from ssr.data.fingerprint import feature_hash
from ssr.errors import ConfigError
from ssr.training.checkpoint import load_checkpoint
from ssr.training.early_stopping import EarlyStopping
from ssr.training.runtime import TrainingOOMError
from ssr.training.trainer import Trainer, clip_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingTracker:
    """A real (in-memory) Tracker implementation that keeps every call for inspection."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.calls.append(("params", dict(params)))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.calls.append(("metrics", (dict(metrics), step)))

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None:
        assert Path(path).is_file()
        self.calls.append(("image", (key, step)))

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None:
        self.calls.append(("confusion", (key, step, len(y_true))))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.calls.append(("artifact", Path(path).name))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.calls.append(("tags", dict(tags)))

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        context: str = "training",
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls.append(("dataset", (name, digest, source, context)))

    def run_ids(self) -> dict[str, str]:
        return {"mlflow": "run-123"}

    def finish(self, status: str = "FINISHED") -> None:
        self.calls.append(("finish", status))

    def of(self, kind: str) -> list[Any]:
        return [value for k, value in self.calls if k == kind]


class ScriptedValLoss(Trainer):
    """Real training, but the validation loss follows a script (to pin down the schedule)."""

    script: list[float] = []

    def validate(self) -> dict[str, Any]:
        out = super().validate()
        out["loss"] = out["session_mean_loss"] = self.script[self.epoch - 1]
        return out


def test_early_stopping_counts_epochs_without_improvement() -> None:
    stop = EarlyStopping(patience=3)
    decisions = []
    for epoch, loss in enumerate([1.0, 0.8, 0.85, 0.8, 0.9, 0.7, 0.75, 0.71, 0.72], start=1):
        improved = stop.step(loss, epoch)
        decisions.append((improved, stop.should_stop))
    assert [d[0] for d in decisions] == [True, True, False, False, False, True, False, False, False]
    assert [d[1] for d in decisions].index(True) == 4  # epoch 5: 3 epochs after the best (2)
    assert stop.best == 0.7 and stop.best_epoch == 6 and stop.should_stop
    clone = EarlyStopping(patience=3)
    clone.load_state_dict(stop.state_dict())
    assert (clone.best, clone.best_epoch, clone.bad_epochs) == (0.7, 6, 3)


def test_plateau_halves_lr_and_early_stopping_ends_training(
    processed: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        None,
        tiny_overrides(
            processed,
            tmp_path,
            training__num_epochs=20,
            training__patience=3,
            training__lr_patience=1,
            training__viz_interval=100,
            training__learning_rate=0.004,
        ),
    )
    ScriptedValLoss.script = [1.0, 0.9] + [0.95] * 18
    result = ScriptedValLoss(cfg).fit()
    assert result.stopped_early and result.epochs_run == 5
    assert result.best_epoch == 2 and result.best_val_loss == pytest.approx(0.9)
    # ReduceLROnPlateau(patience=1): the 2nd epoch without improvement (epoch 4) halves the LR.
    assert [row["lr"] for row in result.history] == pytest.approx(
        [0.004, 0.004, 0.004, 0.002, 0.002]
    )


def test_label_smoothing_reaches_the_loss(processed: Path, tmp_path: Path) -> None:
    losses = {}
    for smoothing in (0.0, 0.4):
        cfg = load_config(
            None,
            tiny_overrides(
                processed,
                tmp_path / str(smoothing),
                training__num_epochs=1,
                training__viz_interval=100,
                training__label_smoothing=smoothing,
            ),
        )
        trainer = Trainer(cfg)
        result = trainer.fit()
        assert trainer.criterion.label_smoothing == smoothing
        losses[smoothing] = result.history[0]["train_loss"]
    # Same seed and data: only the smoothing differs, and it raises the loss of a fresh model
    # whose predictions are still sharper than the smoothed targets allow.
    assert losses[0.4] != pytest.approx(losses[0.0], abs=1e-4)


def grad_norm(parameters: Iterable[torch.nn.Parameter]) -> float:
    """Total L2 norm of the gradients present."""
    norms = [p.grad.detach().norm(2) for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms), 2)) if norms else 0.0


def test_clip_gradients_bounds_the_norm() -> None:
    layer = torch.nn.Linear(10, 10)
    (1000 * layer(torch.randn(4, 10)).pow(2).sum()).backward()
    before = clip_gradients(layer.parameters(), 0.5)
    assert before > 0.5
    assert grad_norm(layer.parameters()) <= 0.5 * (1 + 1e-5)


class RecordsClippedNorm(Trainer):
    """Records the gradient norm the optimizer sees, i.e. after clipping."""

    def _build(self) -> None:
        super()._build()
        self.seen: list[float] = []
        self.optimizer.register_step_pre_hook(
            lambda *_: self.seen.append(grad_norm(self.model.parameters()))
        )


def test_training_steps_use_clipped_gradients(processed: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        tiny_overrides(
            processed,
            tmp_path,
            training__num_epochs=1,
            training__grad_clip=0.01,
            training__viz_interval=100,
        ),
    )
    trainer = RecordsClippedNorm(cfg)
    trainer.fit()
    assert len(trainer.seen) == 6  # 48 utterances / batch 8
    assert max(trainer.seen) <= 0.01 * (1 + 1e-4)


def test_checkpoints_plots_tracking_and_learning(processed: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        tiny_overrides(
            processed,
            tmp_path,
            training__num_epochs=6,
            training__save_interval=3,
            training__viz_interval=3,
            training__learning_rate=0.01,
            training__num_workers=1,
        ),
    )
    tracker = RecordingTracker()
    result = Trainer(cfg, tracker=tracker).fit()

    ckdir = tmp_path / "checkpoints"
    names = {p.name for p in ckdir.glob("*.pth")}
    assert {
        "best_model.pth",
        "last.pth",
        "checkpoint_epoch_3.pth",
        "checkpoint_epoch_6.pth",
    } <= names
    assert not {"checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"} & names
    state = load_checkpoint(str(ckdir / "last.pth"))
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "early_stopping",
        "epoch",
        "global_step",
        "rng",
        "sampler_generator",
        "config",
        "labels",
        "best_val_loss",
        "tracking",
    ):
        assert key in state, key
    assert state["epoch"] == 6 and state["global_step"] == 36
    assert state["labels"] == ["word0", "word1", "word2", "word3"]
    assert state["tracking"] == {"mlflow": "run-123"}
    assert state["config"]["model"]["hidden_size"] == 16
    manifest = json.loads((processed / "manifest.json").read_text())
    assert state["feature_hash"] == manifest["feature_hash"] == feature_hash(manifest)
    assert state["features"]["normalization"] == manifest["normalization"]
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    best = load_checkpoint(str(ckdir / "best_model.pth"))
    assert best["epoch"] == result.best_epoch

    out = tmp_path / "outputs"
    assert {p.name for p in out.glob("*.png")} == {
        "confusion_matrix_epoch_3.png",
        "predictions_epoch_3.png",
        "confusion_matrix_epoch_6.png",
        "predictions_epoch_6.png",
    }

    assert tracker.of("params")[0]["training.batch_size"] == 8
    ((_, digest, source, context),) = tracker.of("dataset")  # the data it trained on
    assert context == "training" and source.endswith("processed") and len(digest) >= 12
    tags = tracker.of("tags")[0]
    assert tags["data.fingerprint"] and tags["torch"] == torch.__version__
    train_steps = [step for m, step in tracker.of("metrics") if "train/loss" in m]
    assert train_steps == list(range(2, 37, 2))  # every log_interval=2 global steps
    epoch_metrics = [(m, step) for m, step in tracker.of("metrics") if "val/loss" in m]
    assert [step for _, step in epoch_metrics] == [1, 2, 3, 4, 5, 6]
    assert set(epoch_metrics[0][0]) == {
        "val/loss",
        "val/accuracy",
        "val/macro_f1",
        "val/session_mean_loss",  # one session (the helper's files lie in val/): the loss
        "val/worst_session_accuracy",
        "val/session/val/accuracy",
        "val/session/val/loss",
        "lr",
        "epoch",
    }
    first = epoch_metrics[0][0]
    assert first["val/session_mean_loss"] == pytest.approx(first["val/loss"])
    assert first["val/session/val/accuracy"] == first["val/accuracy"]
    assert tracker.of("confusion") == [
        ("val/confusion_matrix", 3, 24),
        ("val/confusion_matrix", 6, 24),
    ]
    assert ("val/predictions", 6) in tracker.of("image")
    assert tracker.of("artifact") == ["best_model.pth"]

    # 4 classes: chance is 25 %.
    assert max(row["val_accuracy"] for row in result.history) >= 0.75


class StopsAfter(Trainer):
    """Asks to stop during epoch ``stop_at`` (as a SIGTERM handler would)."""

    stop_at = 2

    def train_epoch(self) -> float:
        loss = super().train_epoch()
        if self.epoch == self.stop_at:
            self.request_stop()
        return loss


def test_resume_reproduces_an_uninterrupted_run_exactly(processed: Path, tmp_path: Path) -> None:
    def overrides(work: Path) -> list[str]:
        return tiny_overrides(
            processed,
            work,
            training__num_epochs=4,
            training__viz_interval=100,
            training__lr_patience=0,
        )

    straight = Trainer(load_config(None, overrides(tmp_path / "a"))).fit()
    assert straight.epochs_run == 4

    stopped = StopsAfter(load_config(None, overrides(tmp_path / "b"))).fit()
    assert stopped.epochs_run == 2 and stopped.stop_requested
    assert main(["train", "--resume", "auto", *overrides(tmp_path / "b")]) == 0

    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    a = load_checkpoint(str(tmp_path / "a" / "checkpoints" / "last.pth"))
    b = load_checkpoint(str(tmp_path / "b" / "checkpoints" / "last.pth"))
    assert b["epoch"] == 4
    assert a["model"].keys() == b["model"].keys()
    assert a["scheduler"] == b["scheduler"]
    assert a["early_stopping"] == b["early_stopping"]


class PreemptedAt(Trainer):
    """Asks to stop now (as SIGTERM does) after global step ``stop_at``: a mid-epoch save."""

    stop_at = 15  # epoch 3 of 6 steps

    def _build(self) -> None:
        super()._build()
        hook = lambda *_: self.global_step + 1 == self.stop_at and self.request_stop(now=True)  # noqa: E731
        self.optimizer.register_step_post_hook(hook)


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a = load_checkpoint(str(a_dir / "checkpoints" / "last.pth"))
    b = load_checkpoint(str(b_dir / "checkpoints" / "last.pth"))
    assert b["epoch"] == a["epoch"] and b["global_step"] == a["global_step"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]


@pytest.mark.slow
def test_resume_with_dataloader_workers_is_exact(processed: Path, tmp_path: Path) -> None:
    """Worker processes (num_workers=2): after an epoch-end stop and after a mid-epoch stop,
    the resumed run ends with the weights of the uninterrupted one (the validation loader
    must not draw its worker seed from the global RNG)."""

    def overrides(work: Path) -> list[str]:
        return tiny_overrides(
            processed,
            work,
            training__num_epochs=4,
            training__viz_interval=100,
            training__num_workers=2,
        )

    assert Trainer(load_config(None, overrides(tmp_path / "a"))).fit().epochs_run == 4
    stopped = StopsAfter(load_config(None, overrides(tmp_path / "b"))).fit()
    assert stopped.epochs_run == 2 and stopped.stop_requested
    assert main(["train", "--resume", "auto", *overrides(tmp_path / "b")]) == 0
    _assert_same_weights(tmp_path / "a", tmp_path / "b")

    preempted = PreemptedAt(load_config(None, overrides(tmp_path / "c"))).fit()
    assert preempted.preempted and preempted.epochs_run == 3
    saved = load_checkpoint(str(tmp_path / "c" / "checkpoints" / "last.pth"))
    assert 0 < saved["epoch_progress"]["batches_done"] < 6
    assert main(["train", "--resume", "auto", *overrides(tmp_path / "c")]) == 0
    _assert_same_weights(tmp_path / "a", tmp_path / "c")


def test_resume_auto_without_checkpoint_starts_fresh(processed: Path, tmp_path: Path) -> None:
    args = tiny_overrides(processed, tmp_path, training__num_epochs=1, training__viz_interval=5)
    assert main(["train", "--resume", "auto", *args]) == 0
    assert load_checkpoint(str(tmp_path / "checkpoints" / "last.pth"))["epoch"] == 1


def test_utterance_longer_than_max_frames_is_a_config_error(
    processed: Path, tmp_path: Path
) -> None:
    cfg = load_config(None, tiny_overrides(processed, tmp_path, model__max_frames=8))
    with pytest.raises(ConfigError, match="model.max_frames"):
        Trainer(cfg).fit()


def test_manifest_shape_mismatch_is_a_config_error(processed: Path, tmp_path: Path) -> None:
    cfg = load_config(None, tiny_overrides(processed, tmp_path, model__num_channels=6))
    with pytest.raises(ConfigError, match="manifest.json: num_channels=8"):
        Trainer(cfg).fit()


class RunsOutOfMemory(Trainer):
    def train_epoch(self) -> float:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_ends_with_advice(
    processed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(None, tiny_overrides(processed, tmp_path))
    with pytest.raises(TrainingOOMError, match="reduce training.batch_size") as info:
        RunsOutOfMemory(cfg).fit()
    assert "num_workers" in str(info.value) and "model.hidden_size" in str(info.value)


def test_cli_reports_bad_resume_path_in_one_line(
    processed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = tiny_overrides(processed, tmp_path)
    assert main(["train", "--resume", str(tmp_path / "missing.pth"), *args]) == 2
    err = capsys.readouterr().err
    assert "missing.pth: checkpoint not found" in err and "Traceback" not in err
