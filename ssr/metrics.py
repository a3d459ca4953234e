"""Classification metrics on integer labels (numpy only).

A leaf module: it imports nothing of ssr, so evaluation, training, tracking and the baseline
may all use it. Macro-F1 is the unweighted mean F1 over the classes present in the true labels
(a class absent from the split neither helps nor hurts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MACRO_F1_CONVENTION = "unweighted mean F1 over the classes present in the true labels"


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
    """Fraction of correct predictions (0 for an empty matrix)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else 0.0
