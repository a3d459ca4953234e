"""Evaluation: numpy metrics agree with scikit-learn; ``evaluate`` writes its outputs."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_data import make_processed
from sklearn import metrics as skm
from wandb_offline import offline_runs

from ssr.baseline import score_baseline
from ssr.cli import main
from ssr.config import Config, ModelConfig
from ssr.data.processed import ProcessedSplit
from ssr.data.sessions import session_of
from ssr.errors import CheckpointError, DataError
from ssr.evaluation import (
    EvalResult,
    accuracy,
    confusion_matrix,
    evaluate,
    macro_f1,
    per_class_metrics,
    read_metrics,
)
from ssr.model import build_model
from ssr.report import render_report
from ssr.storage import publish
from ssr.tracking.base import NullTracker
from ssr.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ["word0", "word1", "word2", "word3"]


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_processed(tmp_path_factory.mktemp("data") / "processed", per_class=6)


@pytest.fixture
def checkpoint(tmp_path: Path) -> str:
    cfg = Config(
        model=ModelConfig(input_size=8, hidden_size=16, num_layers=1, num_heads=2, max_frames=64)
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, len(LABELS))
    state = {"model": model.state_dict(), "config": cfg.model_dump(), "labels": LABELS, "epoch": 1}
    return save_checkpoint(state, str(tmp_path / "ck"), "best_model.pth")


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    y_pred[y_pred == 4] = 3  # class 4 never predicted: precision undefined -> 0
    cm = confusion_matrix(y_true, y_pred, 5)
    assert np.array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=range(5)))
    assert accuracy(cm) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert macro_f1(cm) == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    per = per_class_metrics(cm)
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(5), zero_division=0
    )
    for ours, theirs in (
        (per["precision"], p),
        (per["recall"], r),
        (per["f1"], f),
        (per["support"], s),
    ):
        np.testing.assert_allclose(ours, theirs)


def test_evaluate_writes_metrics_plot_and_predictions(
    processed: Path, checkpoint: str, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = evaluate(checkpoint, "test", str(processed), str(out), device="cpu")
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png",
        "metrics.json",
        "predictions.json",
        "report.html",
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    # the strong linear baseline, fitted on train and scored on the same split, sits beside it
    baseline = metrics["baseline"]
    assert 0.0 <= baseline["accuracy"] <= 1.0 and 0.0 <= baseline["macro_f1"] <= 1.0
    assert baseline["num_train"] > 0 and "logistic" in baseline["name"]
    assert result.baseline == baseline
    assert result.scalars()["test/baseline_accuracy"] == baseline["accuracy"]
    assert "classes present in the true labels" in metrics["macro_f1_convention"]
    report = (out / "report.html").read_text()
    assert "baseline" in report and "data:image/png;base64," in report
    assert f"{metrics['accuracy']:.4f}" in report and f"{baseline['accuracy']:.4f}" in report
    assert metrics["num_samples"] == 12 == result.num_samples
    assert set(metrics["per_class"]) == set(LABELS)
    assert sum(map(sum, metrics["confusion_matrix"])) == 12
    assert sum(c["support"] for c in metrics["per_class"].values()) == 12
    preds = json.loads((out / "predictions.json").read_text())["predictions"]
    assert len(preds) == 12
    assert {"id", "true", "pred", "confidence", "correct"} <= set(preds[0])
    assert all(0.0 < p["confidence"] <= 1.0 for p in preds)
    assert metrics["accuracy"] == pytest.approx(np.mean([p["correct"] for p in preds]))
    assert metrics["loss"] > 0 and (out / "confusion_matrix.png").stat().st_size > 1000
    # one session (all test files lie in one folder); no selection from a hand-made checkpoint
    (only,) = metrics["per_session"].values()
    assert only["num_samples"] == 12 and only["accuracy"] == pytest.approx(metrics["accuracy"])
    assert only["baseline_accuracy"] == pytest.approx(baseline["accuracy"])
    assert "selection" not in metrics and "first tenth" not in report


def test_cli_evaluate(
    processed: Path, checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--split",
            "val",
            "--out",
            str(out),
            f"data.processed_dir={processed}",
            "training.device=cpu",
            "tracking.mlflow.enabled=false",
            "tracking.wandb.enabled=false",
        ]
    )
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["split"] == "val"
    assert "val: accuracy" in capsys.readouterr().out


def test_cli_evaluate_s3_data_logs_the_uri(
    processed: Path, checkpoint: str, s3_env, tmp_path: Path
) -> None:
    """An s3:// data set is read from the local mirror; the logged config keeps the URI."""
    bucket = s3_env.create_bucket(f"ev-{uuid.uuid4().hex[:8]}")
    uri = publish(processed, f"s3://{bucket}/processed")
    args = ["evaluate", "--checkpoint", checkpoint, "--split", "val", "--out", str(tmp_path / "o")]
    args += [f"data.processed_dir={uri}", f"storage.cache_dir={tmp_path / 'cache'}"]
    args += ["training.device=cpu", "tracking.mlflow.enabled=false", "tracking.wandb.mode=offline"]
    assert main(args) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["num_samples"] > 0
    assert (tmp_path / "cache" / bucket / "processed" / "manifest.json").is_file()
    (run,) = offline_runs(tmp_path)
    assert run.config["data.processed_dir"] == uri


class Recorder(NullTracker):
    """Keeps the scalars an evaluation tracks."""

    def __init__(self) -> None:
        self.scalars: dict[str, float] = {}

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.scalars.update(metrics)


def _with_sessions(processed: Path, root: Path, sessions: list[str]) -> Path:
    """A copy of ``processed`` whose test utterance ``i`` lies in folder ``sessions[i]``."""
    shutil.copytree(processed, root)
    ids = json.loads((root / "test_ids.json").read_text())
    moved = [f"test/{s}/{Path(v).name}" for s, v in zip(sessions, ids, strict=True)]
    (root / "test_ids.json").write_text(json.dumps(moved))
    return root


def _predicted(result: EvalResult) -> list[int]:
    """The predicted label ids an evaluation wrote to predictions.json."""
    preds = json.loads(Path(result.files["predictions"]).read_text())["predictions"]
    return [p["pred"] for p in preds]


def _by_session(ids: list[str], correct: np.ndarray) -> dict[str, float]:
    names = np.array([session_of(i) for i in ids])
    return {s: float(correct[names == s].mean()) for s in sorted(set(names))}


def test_evaluate_reports_each_session(processed: Path, tmp_path: Path) -> None:
    """Model and baseline accuracy per session in metrics.json, the trackers and report.html;
    an early best epoch in the checkpoint is flagged."""
    cfg = Config(
        model=ModelConfig(input_size=8, hidden_size=16, num_layers=1, num_heads=2, max_frames=64)
    )
    cfg.training.num_epochs = 20
    torch.manual_seed(0)
    state = {
        "model": build_model(cfg.model, len(LABELS)).state_dict(),
        "config": cfg.model_dump(),
        "labels": LABELS,
        "epoch": 20,
        "best_epoch": 2,  # of 20: within the first tenth
    }
    ck = save_checkpoint(state, str(tmp_path / "ck"), "best_model.pth")
    # session01: the utterances only the model gets right; session02: the rest, where the
    # model loses (the baseline alone is right on some of them)
    first = evaluate(ck, "test", str(processed), str(tmp_path / "first"), device="cpu")
    labels = np.asarray(ProcessedSplit(str(processed), "test").labels)
    model_right = np.array(_predicted(first)) == labels
    base_right = score_baseline(str(processed), "test").predictions == labels
    assert (model_right & ~base_right).any() and (base_right & ~model_right).any()
    names = ["session01" if only else "session02" for only in model_right & ~base_right]
    two_sessions = _with_sessions(processed, tmp_path / "sessions", names)

    out, tracker = tmp_path / "eval", Recorder()
    result = evaluate(ck, "test", str(two_sessions), str(out), tracker=tracker, device="cpu")
    metrics = read_metrics(out / "metrics.json")
    per = metrics["per_session"]
    assert list(per) == ["session01", "session02"] and per == result.per_session
    sizes = [names.count("session01"), names.count("session02")]
    assert [per[s]["num_samples"] for s in per] == sizes
    assert (per["session01"]["accuracy"], per["session01"]["baseline_accuracy"]) == (1.0, 0.0)

    # recomputed from the written predictions and from the baseline's own predictions
    preds = json.loads((out / "predictions.json").read_text())["predictions"]
    ids = [p["id"] for p in preds]
    model_acc = _by_session(ids, np.array([p["correct"] for p in preds]))
    split = ProcessedSplit(str(two_sessions), "test")
    base_pred = score_baseline(str(two_sessions), "test").predictions
    base_acc = _by_session(split.ids, base_pred == np.asarray(split.labels))
    for name in per:
        assert per[name]["accuracy"] == pytest.approx(model_acc[name])
        assert per[name]["baseline_accuracy"] == pytest.approx(base_acc[name])
    # the sessions' accuracies, weighted by size, are the split's
    weights = np.array(sizes) / 12
    assert weights @ [per[s]["accuracy"] for s in per] == pytest.approx(metrics["accuracy"])
    assert weights @ [per[s]["baseline_accuracy"] for s in per] == pytest.approx(
        metrics["baseline"]["accuracy"]
    )

    for name in per:  # tracked for MLflow and W&B alike
        key = f"test/session/{name}"
        assert tracker.scalars[f"{key}/accuracy"] == per[name]["accuracy"]
        assert tracker.scalars[f"{key}/baseline_accuracy"] == per[name]["baseline_accuracy"]

    assert metrics["selection"] == {"best_epoch": 2, "num_epochs": 20, "early_best": True}
    report = (out / "report.html").read_text()
    table = report.split("<h2>Per session</h2>")[1].split("<h2>")[0]
    losing = [s for s in per if per[s]["accuracy"] < per[s]["baseline_accuracy"]]
    assert losing == ["session02"] and table.count('<tr class="loses">') == 1
    for name in per:
        row = table.split(f"<td>{name}</td>")[1].split("</tr>")[0]
        assert f"<td>{per[name]['accuracy']:.4f}</td>" in row
        assert f"<td>{per[name]['baseline_accuracy']:.4f}</td>" in row
        assert ("model loses" in row) is (name in losing)
    assert "first tenth of training" in report and "(2 of 20)" in report


def test_report_without_baseline_or_early_best() -> None:
    metrics = {
        "split": "test",
        "accuracy": 0.5,
        "macro_f1": 0.5,
        "loss": 1.0,
        "num_samples": 4,
        "per_class": {},
        "per_session": {"s1": {"num_samples": 4, "accuracy": 0.5}},
        "selection": {"best_epoch": 9, "num_epochs": 20, "early_best": False},
    }
    report = render_report(metrics)
    assert "<td>s1</td><td>4</td><td>0.5000</td><td>-</td><td>-</td>" in report
    assert "loses" not in report.split("<h2>Per session</h2>")[1]
    assert "first tenth" not in report


def test_session_metric_keys_are_valid_mlflow_names() -> None:
    result = EvalResult("test", 1.0, 0.5, 0.5, 2, ["a"], {}, [[2]], "out")
    result.per_session = {
        ".": {"num_samples": 1, "accuracy": 1.0},
        "day 2 (left)": {"num_samples": 1, "accuracy": 0.0, "baseline_accuracy": 1.0},
    }
    keys = [k for k in result.scalars() if "/session/" in k]
    assert keys == [
        "test/session/_/accuracy",
        "test/session/day_2_left_/accuracy",
        "test/session/day_2_left_/baseline_accuracy",
    ]


def test_label_mismatch_is_refused(tmp_path: Path, checkpoint: str) -> None:
    other = make_processed(tmp_path / "other", n_classes=3, per_class=4)
    with pytest.raises(DataError, match="differ from the checkpoint"):
        evaluate(checkpoint, "test", str(other), str(tmp_path / "out"), device="cpu")
    assert not (tmp_path / "out").exists()


def test_not_a_training_checkpoint(tmp_path: Path, processed: Path) -> None:
    path = save_checkpoint({"weights": torch.zeros(1)}, str(tmp_path), "x.pth")
    with pytest.raises(CheckpointError, match="x.pth: not an ssr training checkpoint"):
        evaluate(path, "test", str(processed), str(tmp_path / "out"), device="cpu")


def _broken_copy(processed: Path, tmp_path: Path, how: str) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(processed, root)
    manifest = json.loads((root / "manifest.json").read_text())
    if how == "no labels":
        del manifest["labels"]
    elif how == "splits not an object":
        manifest["splits"] = ["train"]
    elif how == "manifest a list":
        manifest = [manifest]
    elif how == "index past the end":
        index = np.load(root / "test_index.npy")
        index[-1, 0] += 1000
        np.save(root / "test_index.npy", index)
    elif how == "label id out of range":
        index = np.load(root / "test_index.npy")
        index[0, 2] = 99
        np.save(root / "test_index.npy", index)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("no labels", "manifest.json: 'labels' must be a non-empty list"),
        ("splits not an object", "manifest.json: 'splits' must be a non-empty object"),
        ("manifest a list", "manifest.json: must be a JSON object"),
        ("index past the end", r"test_index.npy: utterance \d+ .* outside the \d+ frames"),
        ("label id out of range", "test_index.npy: label id 99 outside the 4 labels"),
    ],
)
def test_broken_processed_data_exits_2(
    processed: Path, checkpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    how: str, problem: str,
) -> None:  # fmt: skip
    root = _broken_copy(processed, tmp_path, how)
    args = ["evaluate", "--checkpoint", checkpoint, "--out", str(tmp_path / "out")]
    args += [f"data.processed_dir={root}", "training.device=cpu"]
    args += ["tracking.mlflow.enabled=false", "tracking.wandb.enabled=false"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(problem, err) and str(root) in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


VALID = '{"accuracy": 1, "macro_f1": 1, "loss": 0, "labels": ["a"], "confusion_matrix": [[2]]}'


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"accuracy": "high"}', "'accuracy' must be a number, got 'high'"),
        ("{nope", "not valid JSON"),
        (
            '{"accuracy": 1, "macro_f1": 1, "loss": 0, "labels": ["a"], '
            '"confusion_matrix": [[1, 2]]}',
            "'confusion_matrix' must be a square",
        ),
        (VALID[:-1] + ', "per_session": [1]}', "'per_session' must be an object of sessions"),
        (
            VALID[:-1] + ', "per_session": {"s1": {"num_samples": 2, "accuracy": "x"}}}',
            r"per_session\['s1'\] must be an object of numbers",
        ),
        (
            VALID[:-1] + ', "per_session": {"s1": {"accuracy": 0.5}}}',
            r"per_session\['s1'\] must be an object of numbers with num_samples",
        ),
        (VALID[:-1] + ', "selection": {"best_epoch": 1}}', "'selection' must be an object"),
    ],
)
def test_bad_metrics_json_is_named(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as info:
        read_metrics(path)
    assert str(path) in str(info.value)


def test_metrics_json_without_per_session_is_valid(tmp_path: Path) -> None:
    """metrics.json written before per-session scores existed still reads."""
    path = tmp_path / "metrics.json"
    path.write_text(VALID)
    assert "per_session" not in read_metrics(path)
    path.write_text(VALID[:-1] + ', "per_session": {"s1": {"num_samples": 2, "accuracy": 1}}}')
    assert read_metrics(path)["per_session"] == {"s1": {"num_samples": 2, "accuracy": 1}}


def test_other_features_are_refused(processed: Path, tmp_path: Path) -> None:
    """Same recordings and labels, other feature settings: evaluate and resume refuse."""
    from ssr.training.checkpoint import feature_state, load_checkpoint
    from ssr.training.job import check_resume_identity

    cfg = Config(
        model=ModelConfig(input_size=8, hidden_size=16, num_layers=1, num_heads=2, max_frames=64)
    )
    manifest = json.loads((processed / "manifest.json").read_text())
    state = {
        "model": build_model(cfg.model, len(LABELS)).state_dict(),
        "config": cfg.model_dump(),
        "labels": LABELS,
        "data_fingerprint": manifest["fingerprint"],
        **feature_state(manifest),
    }
    ck = save_checkpoint(state, str(tmp_path / "ck"), "best_model.pth")
    assert evaluate(ck, "test", str(processed), str(tmp_path / "ok"), device="cpu").num_samples

    other = tmp_path / "other"
    shutil.copytree(processed, other)
    manifest["preprocessing"]["bandpass_high"] = 200.0
    manifest["normalization"]["std"][0] = 2.0
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as info:
        evaluate(ck, "test", str(other), str(tmp_path / "out"), device="cpu")
    message = str(info.value)
    assert message.startswith(ck) and str(other) in message
    assert "preprocessing.bandpass_high: None -> 200.0" in message
    assert "normalization.std" in message
    assert not (tmp_path / "out").exists()

    resume_cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"processed_dir": str(other)})}
    )
    with pytest.raises(CheckpointError, match="trained on features"):
        check_resume_identity(resume_cfg, load_checkpoint(ck), ck)
