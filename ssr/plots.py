"""Training and evaluation figures, rendered off-screen (Agg) and written atomically as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ssr.fsutil import atomic_path


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to a PNG at ``path`` atomically (temp name, then rename)."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


def plot_confusion_matrix(
    cm: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "Confusion matrix",
) -> Path:
    """Row-normalised confusion matrix (rows: true, columns: predicted) with raw counts."""
    cm = np.asarray(cm)
    n = len(labels)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = max(4.0, 0.45 * n + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=list(labels), rotation=90 if n > 8 else 45, ha="right")
    ax.set_yticks(range(n), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7, color=colour
                    )
    return save_figure(fig, path)


def plot_predictions(
    features: Sequence[np.ndarray],
    true: Sequence[int],
    pred: Sequence[int],
    confidence: Sequence[float],
    labels: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """A few utterances' feature maps (frames x channel-bins) titled true vs predicted label."""
    k = len(features)
    if k == 0:
        raise ValueError("plot_predictions needs at least one utterance")
    fig = Figure(figsize=(3.2 * k, 3.8), layout="constrained")
    for i, feat in enumerate(features):
        ax = fig.add_subplot(1, k, i + 1)
        frames = np.asarray(feat).reshape(len(feat), -1)  # (T, C*F)
        ax.imshow(frames.T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
        ok = true[i] == pred[i]
        ax.set_title(
            f"true: {labels[true[i]]}\npred: {labels[pred[i]]} ({confidence[i]:.0%})",
            fontsize=9,
            color="darkgreen" if ok else "firebrick",
        )
        ax.set_xlabel("frame")
        if i == 0:
            ax.set_ylabel("channel x bin")
    fig.suptitle("Validation predictions")
    return save_figure(fig, path)
