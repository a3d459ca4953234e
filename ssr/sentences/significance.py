"""Paired bootstrap test of two recognisers' word error rates on the same utterances.

Bisani, M. & Ney, H. (2004), "Bootstrap estimates for confidence intervals in ASR performance
evaluation", ICASSP: utterances are resampled with replacement, both systems' errors summed
over the same resample, and the share of resamples in which the challenger is not better is
the one-sided p-value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Resampled index matrices are drawn in blocks of about this many entries (memory bound).
_BLOCK = 1 << 22


@dataclass
class BootstrapResult:
    """``p_value``: share of resamples where A's WER >= B's; ``delta`` = ``wer_a - wer_b`` on
    all utterances (negative: A better); ``delta_ci``: its 95 % bootstrap interval."""

    p_value: float
    wer_a: float
    wer_b: float
    delta: float
    delta_ci: tuple[float, float]


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_words: np.ndarray,
    samples: int = 10000,
    seed: int = 0,
) -> BootstrapResult:
    """One-sided paired bootstrap (Bisani & Ney 2004) of challenger A against B from per-
    utterance error counts and reference lengths; deterministic given ``seed``."""
    a = np.asarray(errors_a, dtype=np.float64)
    b = np.asarray(errors_b, dtype=np.float64)
    ref = np.asarray(ref_words, dtype=np.float64)
    if not (a.ndim == b.ndim == ref.ndim == 1 and len(a) == len(b) == len(ref)):
        raise ValueError("errors_a, errors_b and ref_words must be 1-D arrays of one length")
    if len(ref) == 0 or ref.sum() <= 0:
        raise ValueError("the bootstrap needs utterances with reference words")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    n = len(ref)
    rng = np.random.default_rng(seed)
    diff = a - b
    not_better = 0
    deltas = np.empty(samples)
    block = max(1, _BLOCK // n)
    for start in range(0, samples, block):
        rows = min(block, samples - start)
        idx = rng.integers(0, n, size=(rows, n))
        d = diff[idx].sum(axis=1)
        not_better += int((d >= 0).sum())
        deltas[start : start + rows] = d / np.maximum(ref[idx].sum(axis=1), 1.0)
    low, high = np.quantile(deltas, [0.025, 0.975])
    wer_a, wer_b = float(a.sum() / ref.sum()), float(b.sum() / ref.sum())
    return BootstrapResult(
        p_value=not_better / samples,
        wer_a=wer_a,
        wer_b=wer_b,
        delta=wer_a - wer_b,
        delta_ci=(float(low), float(high)),
    )
