"""``ssr evaluate``: score a checkpoint on a split, beside the strong linear baseline.

The metrics themselves live in :mod:`ssr.metrics`; they are re-exported here for callers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ssr.baseline import score_baseline
from ssr.data.processed import ProcessedSplit, collate
from ssr.data.sessions import metric_keys, session_groups
from ssr.errors import DataError
from ssr.fsutil import read_json_object, write_json, write_text
from ssr.metrics import (
    MACRO_F1_CONVENTION,
    accuracy,
    confusion_matrix,
    macro_f1,
    per_class_metrics,
)
from ssr.metrics_json import check_per_session, is_number
from ssr.plots import plot_confusion_matrix
from ssr.progress import progress_bar
from ssr.report import render_report
from ssr.sentences.evaluation import (
    SentenceEvalResult,
    evaluate_sentences,
    read_sentence_metrics,
)
from ssr.tracking.base import NullTracker, Tracker
from ssr.training.checkpoint import check_features, load_checkpoint, restore_model
from ssr.training.runtime import select_device
from ssr.training.selection import selection_of

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.0,
    desc: str | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` over ``loader``: per-utterance loss, true label, prediction, confidence."""
    model.eval()
    losses, trues, preds, confs = [], [], [], []
    for batch in progress_bar(loader, desc=desc, leave=False, disable=desc is None):
        batch = batch.to(device, non_blocking=True)
        if autocast_dtype is None:
            logits = model(batch.x, batch.padding_mask())
        else:
            with torch.autocast(device_type=device.type, dtype=autocast_dtype):
                logits = model(batch.x, batch.padding_mask())
        logits = logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits, batch.labels, reduction="none", label_smoothing=label_smoothing
        )
        probs = logits.softmax(dim=-1)
        conf, pred = probs.max(dim=-1)
        losses.append(loss.cpu().numpy())
        trues.append(batch.labels.cpu().numpy())
        preds.append(pred.cpu().numpy())
        confs.append(conf.cpu().numpy())
    return {
        "loss": np.concatenate(losses),
        "true": np.concatenate(trues),
        "pred": np.concatenate(preds),
        "confidence": np.concatenate(confs),
    }


def session_scores(
    ids: Sequence[str],
    true: np.ndarray,
    pred: np.ndarray,
    baseline_pred: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """``{session: {"num_samples", "accuracy"[, "baseline_accuracy"]}}``, sessions by name.

    The session of an utterance is the folder of its source path (:mod:`ssr.data.sessions`).
    """
    true, pred = np.asarray(true), np.asarray(pred)
    baseline_pred = None if baseline_pred is None else np.asarray(baseline_pred)
    if not len(ids) == len(true) == len(pred):
        raise ValueError(f"{len(ids)} ids, {len(true)} labels and {len(pred)} predictions")
    if baseline_pred is not None and len(baseline_pred) != len(true):
        raise ValueError(f"{len(baseline_pred)} baseline predictions for {len(true)} utterances")
    out: dict[str, dict[str, Any]] = {}
    for session, idx in session_groups(ids).items():
        entry: dict[str, Any] = {
            "num_samples": int(idx.size),
            "accuracy": float(np.mean(true[idx] == pred[idx])),
        }
        if baseline_pred is not None:
            entry["baseline_accuracy"] = float(np.mean(true[idx] == baseline_pred[idx]))
        out[session] = entry
    return out


@dataclass
class EvalResult:
    """Scores of one checkpoint on one split, and where the outputs were written."""

    split: str
    loss: float
    accuracy: float
    macro_f1: float
    num_samples: int
    labels: list[str]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    per_session: dict[str, dict[str, Any]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    def scalars(self) -> dict[str, float]:
        """``{split}/loss``, ``/accuracy``, ``/macro_f1``, the baseline's, and per session
        ``{split}/session/{name}/accuracy`` and ``/baseline_accuracy``, for trackers."""
        out = {
            f"{self.split}/loss": self.loss,
            f"{self.split}/accuracy": self.accuracy,
            f"{self.split}/macro_f1": self.macro_f1,
        }
        if self.baseline is not None:
            out[f"{self.split}/baseline_accuracy"] = float(self.baseline["accuracy"])
            out[f"{self.split}/baseline_macro_f1"] = float(self.baseline["macro_f1"])
        keys = metric_keys(list(self.per_session))
        for name, scores in self.per_session.items():
            key = f"{self.split}/session/{keys[name]}"
            out[f"{key}/accuracy"] = float(scores["accuracy"])
            if "baseline_accuracy" in scores:
                out[f"{key}/baseline_accuracy"] = float(scores["baseline_accuracy"])
        return out

    def metrics(self) -> dict[str, Any]:
        """The JSON written to ``metrics.json``."""
        return {
            "split": self.split,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "num_samples": self.num_samples,
            "labels": self.labels,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion_matrix,
            "macro_f1_convention": MACRO_F1_CONVENTION,
            **({"baseline": self.baseline} if self.baseline is not None else {}),
            "per_session": self.per_session,
            **({"selection": self.selection} if self.selection is not None else {}),
        }


def evaluate(
    checkpoint: str,
    split: str,
    processed_dir: str,
    out_dir: str,
    tracker: Tracker | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    baseline: bool = True,
    state: dict[str, Any] | None = None,
) -> EvalResult | SentenceEvalResult:
    """Score ``checkpoint`` on ``split`` of ``processed_dir``; write metrics.json,
    confusion_matrix.png, predictions.json and report.html to ``out_dir``. A ``task:
    sentences`` checkpoint is scored by :func:`ssr.sentences.evaluation.evaluate_sentences`.

    The model is rebuilt from the config stored in the checkpoint. The loss is plain
    cross-entropy (no label smoothing), so it is comparable across training configs. With
    ``baseline``, :mod:`ssr.baseline` is fitted on the train split and scored on the same
    split (``metrics.json``'s ``baseline``, tracked as ``{split}/baseline_*``). ``state`` is
    the checkpoint already loaded, if the caller has it.
    """
    tracker = tracker or NullTracker()
    if state is None:
        state = load_checkpoint(checkpoint)
    model, cfg, labels = restore_model(state, checkpoint)
    dev = device if isinstance(device, torch.device) else select_device(device)
    if cfg.task == "sentences":
        return evaluate_sentences(
            checkpoint, split, processed_dir, out_dir, model, cfg, state, tracker, batch_size, dev
        )
    data = ProcessedSplit(processed_dir, split)
    if data.label_names != labels:
        raise DataError(
            f"{processed_dir}: labels {data.label_names} differ from the checkpoint's {labels}"
        )
    if not check_features(state, data.manifest, checkpoint, str(processed_dir)):
        log.warning(
            "%s: no feature hash (an older checkpoint); only its labels were checked against %s",
            checkpoint,
            processed_dir,
        )
    model.to(dev)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = predict(model, loader, dev, desc=f"evaluate {split}")
    cm = confusion_matrix(out["true"], out["pred"], len(labels))
    per = per_class_metrics(cm)
    result = EvalResult(
        split=split,
        loss=float(out["loss"].mean()),
        accuracy=accuracy(cm),
        macro_f1=macro_f1(cm),
        num_samples=len(data),
        labels=labels,
        per_class={
            name: {
                "precision": float(per["precision"][i]),
                "recall": float(per["recall"][i]),
                "f1": float(per["f1"][i]),
                "support": int(per["support"][i]),
            }
            for i, name in enumerate(labels)
        },
        confusion_matrix=cm.tolist(),
        out_dir=str(out_dir),
        selection=selection_of(state),
    )
    baseline_pred = None
    if baseline:
        score = score_baseline(processed_dir, split)
        result.baseline = score.summary()
        baseline_pred = score.predictions
    result.per_session = session_scores(data.ids, out["true"], out["pred"], baseline_pred)
    out_path = Path(out_dir)
    predictions = [
        {
            "index": i,
            "id": data.ids[i],
            "true": int(out["true"][i]),
            "pred": int(out["pred"][i]),
            "true_label": labels[int(out["true"][i])],
            "pred_label": labels[int(out["pred"][i])],
            "confidence": float(out["confidence"][i]),
            "correct": bool(out["true"][i] == out["pred"][i]),
        }
        for i in range(len(data))
    ]
    write_json(
        out_path / "predictions.json",
        {"split": split, "checkpoint": str(checkpoint), "predictions": predictions},
    )
    plot_confusion_matrix(
        cm, labels, out_path / "confusion_matrix.png", title=f"Confusion matrix ({split})"
    )
    write_json(out_path / "metrics.json", result.metrics())
    write_text(
        out_path / "report.html",
        render_report(result.metrics(), out_path / "confusion_matrix.png"),
    )
    result.files = {
        "metrics": str(out_path / "metrics.json"),
        "predictions": str(out_path / "predictions.json"),
        "confusion_matrix": str(out_path / "confusion_matrix.png"),
        "report": str(out_path / "report.html"),
    }
    tracker.log_metrics(result.scalars(), step=0)
    tracker.log_confusion_matrix(
        out["true"].tolist(), out["pred"].tolist(), labels, key=f"{split}/confusion_matrix"
    )
    tracker.log_artifact(result.files["metrics"], artifact_path="evaluation")
    tracker.log_artifact(result.files["predictions"], artifact_path="evaluation")
    tracker.log_artifact(result.files["report"], artifact_path="evaluation")
    log.info(
        "%s: loss %.4f accuracy %.4f macro-F1 %.4f (%d utterances)%s",
        split,
        result.loss,
        result.accuracy,
        result.macro_f1,
        result.num_samples,
        f"; baseline accuracy {result.baseline['accuracy']:.4f} macro-F1 "
        f"{result.baseline['macro_f1']:.4f}"
        if result.baseline
        else "",
    )
    log.info("%s per session: %s", split, _session_line(result.per_session))
    if result.selection and result.selection["early_best"]:
        log.warning(
            "%s: best epoch %d of %d lies in the first tenth of training: a sign the model "
            "learns the training sessions",
            checkpoint,
            result.selection["best_epoch"],
            result.selection["num_epochs"],
        )
    return result


def _session_line(per_session: dict[str, dict[str, Any]]) -> str:
    """``session09 0.7500 (baseline 0.8750, 8 utt.), ...`` for the log."""
    parts = []
    for name, s in per_session.items():
        base = f"baseline {s['baseline_accuracy']:.4f}, " if "baseline_accuracy" in s else ""
        parts.append(f"{name} {s['accuracy']:.4f} ({base}{s['num_samples']} utt.)")
    return ", ".join(parts) or "none"


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an ``ssr evaluate`` ``metrics.json`` (a sentence evaluation's is checked by
    :func:`ssr.sentences.evaluation.read_sentence_metrics`); DataError naming the file and
    field if it is not an object with numeric ``accuracy``, ``macro_f1`` and ``loss``, a
    ``labels`` list of strings and a square integer ``confusion_matrix`` (and, if present, a
    numeric baseline, ``per_session`` scores and the checkpoint's ``selection``)."""
    path = Path(path)
    metrics = read_json_object(path)
    if metrics.get("task") == "sentences":
        return read_sentence_metrics(path, metrics)
    for key in ("accuracy", "macro_f1", "loss"):
        if not is_number(metrics.get(key)):
            raise DataError(f"{path}: {key!r} must be a number, got {metrics.get(key)!r}")
    labels = metrics.get("labels")
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise DataError(f"{path}: 'labels' must be a list of strings")
    cm = metrics.get("confusion_matrix")
    if not (
        isinstance(cm, list)
        and len(cm) == len(labels)
        and all(
            isinstance(row, list)
            and len(row) == len(labels)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in row)
            for row in cm
        )
    ):
        raise DataError(f"{path}: 'confusion_matrix' must be a square list of integer rows")
    _check_optional(path, metrics)
    return metrics


def _check_optional(path: Path, metrics: dict[str, Any]) -> None:
    """The optional parts of ``metrics.json``: ``baseline``, ``per_session``, ``selection``."""
    baseline = metrics.get("baseline")
    if baseline is not None and not (
        isinstance(baseline, dict)
        and all(is_number(baseline.get(k)) for k in ("accuracy", "macro_f1"))
    ):
        raise DataError(f"{path}: 'baseline' must be an object with numeric accuracy and macro_f1")
    check_per_session(path, metrics.get("per_session"), "accuracy")
    selection = metrics.get("selection")
    if selection is not None and not (
        isinstance(selection, dict)
        and all(is_number(selection.get(k)) for k in ("best_epoch", "num_epochs"))
        and isinstance(selection.get("early_best"), bool)
    ):
        raise DataError(
            f"{path}: 'selection' must be an object with numeric best_epoch and num_epochs "
            "and a boolean early_best"
        )


def default_out_dir(output_dir: str, split: str) -> str:
    """Where ``ssr evaluate`` writes when ``--out`` is not given."""
    return os.path.join(output_dir, "evaluation", split)
