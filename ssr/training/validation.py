"""Validation scores per recording session and the model-selection metric built on them.

A validation split may hold several recording sessions (:mod:`ssr.data.sessions`). One large
session would dominate a loss averaged over utterances, so the trainer selects on the mean over
sessions of each session's mean loss (:func:`session_mean_loss`; with one session it is the
plain validation loss). Results gathered from DDP ranks are put back into dataset order first
(:func:`in_dataset_order`), so each utterance keeps its id and session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssr.data.sessions import metric_keys, session_groups
from ssr.training.runtime import TrainingError


@dataclass(frozen=True)
class SessionScore:
    """One validation session's utterance count, mean loss and accuracy."""

    name: str
    count: int
    loss: float
    accuracy: float


def in_dataset_order(parts: Sequence[Mapping[str, np.ndarray]], size: int) -> dict[str, Any]:
    """Concatenate the ranks' ``parts`` (each with an ``index`` array: the dataset positions
    of its rows) and sort the rows into dataset order; every position must occur once."""
    merged = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    if any(len(v) != len(merged["index"]) for v in merged.values()):
        raise TrainingError("validation results and their utterance indices differ in length")
    order = np.argsort(merged["index"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    if not np.array_equal(merged["index"], np.arange(size)):
        raise TrainingError(
            f"validation results cover {len(merged['index'])} rows, not each of the {size} "
            "validation utterances once; the ranks' validation shards do not fit together"
        )
    return merged


def session_scores(
    ids: Sequence[str], loss: np.ndarray, true: np.ndarray, pred: np.ndarray
) -> list[SessionScore]:
    """Per-session scores of per-utterance results in the order of ``ids``, sorted by name."""
    if not len(ids) == len(loss) == len(true) == len(pred):
        raise TrainingError(f"{len(ids)} validation ids but {len(loss)} results")
    return [
        SessionScore(
            name=name,
            count=len(idx),
            loss=float(loss[idx].mean()),
            accuracy=float((true[idx] == pred[idx]).mean()),
        )
        for name, idx in session_groups(ids).items()
    ]


def session_mean_loss(scores: Sequence[SessionScore]) -> float:
    """The selection metric: the unweighted mean over sessions of each session's mean loss."""
    return float(np.mean([s.loss for s in scores]))


def worst_session(scores: Sequence[SessionScore]) -> SessionScore:
    """The session with the lowest accuracy (the first by name on a tie)."""
    return min(scores, key=lambda s: s.accuracy)


def session_metrics(scores: Sequence[SessionScore]) -> dict[str, float]:
    """Scalars for the tracker: the selection metric, the worst session's accuracy and each
    session's ``session/<name>/accuracy`` and ``session/<name>/loss``."""
    keys = metric_keys([s.name for s in scores])
    out = {
        "session_mean_loss": session_mean_loss(scores),
        "worst_session_accuracy": worst_session(scores).accuracy,
    }
    for s in scores:
        out[f"session/{keys[s.name]}/accuracy"] = s.accuracy
        out[f"session/{keys[s.name]}/loss"] = s.loss
    return out
