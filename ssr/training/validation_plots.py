"""Validation plots of one epoch (confusion matrix and example predictions; for sentences CTC
posteriorgrams and a transcript table), written locally and logged to the tracker; rank 0 only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssr.data.processed import ProcessedSplit, collate
from ssr.plots import plot_confusion_matrix, plot_predictions
from ssr.sentences.plots import plot_posteriorgrams
from ssr.tracking.base import Tracker
from ssr.training.ctc import emissions

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


def plot_sentence_validation(
    val: dict[str, Any],
    model: torch.nn.Module,
    labels: list[str],
    val_set: ProcessedSplit,
    outdir: Path,
    epoch: int,
    tracker: Tracker,
) -> None:
    """``task: sentences``: CTC posteriorgrams of the first validation utterances and the table
    of every utterance's reference and greedy hypothesis, logged to ``tracker`` at ``epoch``
    (a W&B table; a JSON artefact in MLflow)."""
    idx = list(range(min(NUM_VIZ_EXAMPLES, len(val_set))))
    device = next(model.parameters()).device
    logits, lengths = emissions(model.eval(), collate([val_set[i] for i in idx]), device)
    log_probs = logits.log_softmax(dim=-1).cpu().numpy()
    items = [
        (log_probs[j, :n], val["references"][i], val["hypotheses"][i])
        for j, (i, n) in enumerate(zip(idx, lengths.tolist(), strict=True))
    ]
    path = plot_posteriorgrams(items, labels, outdir / f"posteriorgram_epoch_{epoch}.png")
    tracker.log_image(path, key="val/posteriorgram", step=epoch)
    rows = [
        [source, ref, hyp, int(errors), len(ref)]
        for source, ref, hyp, errors in zip(
            val_set.ids, val["references"], val["hypotheses"], val["char_errors"], strict=True
        )
    ]
    columns = ["utterance", "reference", "hypothesis", "char_errors", "ref_chars"]
    tracker.log_table("val/transcripts", columns, rows, step=epoch)
