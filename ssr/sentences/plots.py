"""Figures of ``task: sentences``: CTC posteriorgrams (output frames x units), rendered off-screen
(Agg) and written atomically as PNG; and transcript rows for tables."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ssr.plots import save_figure
from ssr.sentences.units import BLANK, SPACE

MAX_ITEMS = 4
TITLE_WIDTH = 110  # characters per title line
TRANSCRIPT_COLUMNS = ["id", "reference", "hypothesis", "correct"]


def unit_names(labels: Sequence[str]) -> list[str]:
    """Tick labels of the units: the blank as ``_``, the space as ``␣``."""
    return ["_" if u == BLANK else "\u2423" if u == SPACE else u for u in labels]


def _draw(
    ax: Axes, log_probs: np.ndarray, labels: Sequence[str], reference: str, hypothesis: str
) -> None:
    probs = np.exp(np.asarray(log_probs, dtype=np.float64))
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"log_probs must be (frames, {len(labels)}), got {probs.shape}")
    ax.imshow(
        probs.T,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    ax.set_yticks(range(len(labels)), labels=unit_names(labels), fontsize=7)
    ax.set_ylabel("unit")
    ax.set_xlabel("output frame")
    wrap = textwrap.TextWrapper(TITLE_WIDTH, subsequent_indent="     ")
    title = "\n".join([*wrap.wrap(f"ref: {reference}"), *wrap.wrap(f"hyp: {hypothesis}")])
    ax.set_title(
        title, fontsize=9, loc="left", color="darkgreen" if reference == hypothesis else "black"
    )


def _width(frames: int) -> float:
    return float(min(20.0, max(6.0, 3.0 + 0.06 * frames)))


def plot_posteriorgram(
    log_probs: np.ndarray,
    labels: Sequence[str],
    reference: str,
    hypothesis: str,
    path: str | os.PathLike[str],
) -> Path:
    """One utterance's (T, U) log-probs as a frames x units image titled with its texts."""
    fig = Figure(figsize=(_width(len(log_probs)), 0.16 * len(labels) + 1.6), layout="constrained")
    _draw(fig.add_subplot(), log_probs, labels, reference, hypothesis)
    return save_figure(fig, path)


def plot_posteriorgrams(
    items: Sequence[tuple[np.ndarray, str, str]],
    labels: Sequence[str],
    path: str | os.PathLike[str],
) -> Path:
    """Up to :data:`MAX_ITEMS` utterances' ``(log_probs, reference, hypothesis)`` stacked in one
    figure (the rest are left out)."""
    shown = list(items)[:MAX_ITEMS]
    if not shown:
        raise ValueError("plot_posteriorgrams needs at least one utterance")
    width = _width(max(len(lp) for lp, _, _ in shown))
    fig = Figure(figsize=(width, len(shown) * (0.16 * len(labels) + 1.6)), layout="constrained")
    for i, (log_probs, reference, hypothesis) in enumerate(shown):
        _draw(fig.add_subplot(len(shown), 1, i + 1), log_probs, labels, reference, hypothesis)
    return save_figure(fig, path)


def transcript_rows(
    ids: Sequence[str], references: Sequence[str], hypotheses: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per utterance with the keys of :data:`TRANSCRIPT_COLUMNS` (for a report or, as
    ``[list(row.values()) for row in rows]``, ``Tracker.log_table``)."""
    if not len(ids) == len(references) == len(hypotheses):
        raise ValueError(
            f"{len(ids)} ids, {len(references)} references and {len(hypotheses)} hypotheses"
        )
    return [
        dict(zip(TRANSCRIPT_COLUMNS, (i, r, h, r == h), strict=True))
        for i, r, h in zip(ids, references, hypotheses, strict=True)
    ]
