"""Classification metrics (numpy only) and ``ssr evaluate``: score a checkpoint on a split."""

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
from tqdm import tqdm

from ssr.data.processed import ProcessedSplit, collate
from ssr.errors import DataError
from ssr.fsutil import write_json
from ssr.plots import plot_confusion_matrix
from ssr.tracking.base import NullTracker, Tracker

log = logging.getLogger(__name__)


def confusion_matrix(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int], num_classes: int
) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true labels, columns predictions.

    Raises ValueError for arrays of different shapes or a label outside ``[0, num_classes)``.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} must be 1-D and equally long")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} class names")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where undefined)."""
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in the true labels."""
    per = per_class_metrics(cm)
    present = per["support"] > 0
    return float(per["f1"][present].mean()) if present.any() else 0.0


def accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0


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
    for batch in tqdm(loader, desc=desc, leave=False, disable=desc is None):
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
        }


def evaluate(
    checkpoint: str,
    split: str,
    processed_dir: str,
    out_dir: str,
    tracker: Tracker | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
) -> EvalResult:
    """Score ``checkpoint`` on ``split`` of ``processed_dir``; write metrics.json,
    confusion_matrix.png and predictions.json to ``out_dir``.

    The model is rebuilt from the config stored in the checkpoint. The loss is plain
    cross-entropy (no label smoothing), so it is comparable across training configs.
    """
    # ssr.training imports this module, so its parts are imported here, not at the top.
    from ssr.training.checkpoint import load_checkpoint, restore_model
    from ssr.training.runtime import select_device

    tracker = tracker or NullTracker()
    model, _, labels = restore_model(load_checkpoint(checkpoint), checkpoint)
    data = ProcessedSplit(processed_dir, split)
    if data.label_names != labels:
        raise DataError(
            f"{processed_dir}: labels {data.label_names} differ from the checkpoint's {labels}"
        )
    dev = device if isinstance(device, torch.device) else select_device(device)
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
    )
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
    result.files = {
        "metrics": str(out_path / "metrics.json"),
        "predictions": str(out_path / "predictions.json"),
        "confusion_matrix": str(out_path / "confusion_matrix.png"),
    }
    tracker.log_metrics(
        {
            f"{split}/loss": result.loss,
            f"{split}/accuracy": result.accuracy,
            f"{split}/macro_f1": result.macro_f1,
        },
        step=0,
    )
    tracker.log_confusion_matrix(
        out["true"].tolist(), out["pred"].tolist(), labels, key=f"{split}/confusion_matrix"
    )
    tracker.log_artifact(result.files["metrics"], artifact_path="evaluation")
    tracker.log_artifact(result.files["predictions"], artifact_path="evaluation")
    log.info(
        "%s: loss %.4f accuracy %.4f macro-F1 %.4f (%d utterances)",
        split,
        result.loss,
        result.accuracy,
        result.macro_f1,
        result.num_samples,
    )
    return result


def default_out_dir(output_dir: str, split: str) -> str:
    """Where ``ssr evaluate`` writes when ``--out`` is not given."""
    return os.path.join(output_dir, "evaluation", split)
