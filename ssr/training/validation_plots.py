"""Validation plots of one epoch (confusion matrix, example predictions), written locally and
logged to the tracker; rank 0 only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssr.data.processed import ProcessedSplit
from ssr.plots import plot_confusion_matrix, plot_predictions
from ssr.tracking.base import Tracker

NUM_VIZ_EXAMPLES = 4


def plot_validation(
    val: dict[str, Any],
    labels: list[str],
    val_set: ProcessedSplit,
    outdir: Path,
    epoch: int,
    tracker: Tracker,
) -> None:
    """Plot ``val`` (from ``Trainer.validate``: every utterance, in dataset order) into
    ``outdir`` and log the plots to ``tracker`` at step ``epoch``."""
    plot_confusion_matrix(
        val["confusion_matrix"],
        labels,
        outdir / f"confusion_matrix_epoch_{epoch}.png",
        title=f"Validation confusion matrix, epoch {epoch}",
    )
    # The first utterances of the validation set.
    idx = range(min(NUM_VIZ_EXAMPLES, len(val_set)))
    feats = [val_set[i][0].numpy() for i in idx]
    pred_path = plot_predictions(
        feats,
        [int(val["y_true"][j]) for j in idx],
        [int(val["y_pred"][j]) for j in idx],
        [float(val["confidence"][j]) for j in idx],
        labels,
        outdir / f"predictions_epoch_{epoch}.png",
    )
    tracker.log_confusion_matrix(
        val["y_true"].tolist(),
        val["y_pred"].tolist(),
        labels,
        key="val/confusion_matrix",
        step=epoch,
    )
    tracker.log_image(pred_path, key="val/predictions", step=epoch)
