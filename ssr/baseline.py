"""The strong linear baseline every model is measured against.

Per utterance, from the same processed features the model sees (log band powers, frames x
electrodes x bands):

1. the log-power envelope of each electrode (log of the mean band power of a frame);
2. the active region: the frames whose electrode-mean envelope rises above the midpoint
   between the utterance's quietest and loudest frame, plus one frame either side;
3. each electrode centred on its mean over that region (removes the session's electrode gain,
   an additive offset in log power);
4. the region resampled to ``frames`` steps (linear interpolation), so the order of the
   articulatory events is kept at a fixed relative time;

then a standardised multinomial logistic regression fitted on the training split. It fits in
seconds, needs no GPU, and is hard to beat on small cross-session data: a model that does not
beat it has not learned more than the envelope's shape. ``ssr evaluate`` reports it beside the
model and the promotion gate refuses a challenger that does not beat it.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssr.data.processed import ProcessedSplit
from ssr.errors import DataError
from ssr.metrics import accuracy, confusion_matrix, macro_f1

log = logging.getLogger(__name__)

ENVELOPE_FRAMES = 16
NAME = f"log-power envelope ({ENVELOPE_FRAMES} relative-time steps, channel-centred) + logistic"


def envelope_features(features: np.ndarray, frames: int = ENVELOPE_FRAMES) -> np.ndarray:
    """One utterance's (frames, electrodes, bands) log band powers -> flat (electrodes*frames)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] < 1:
        raise DataError(f"baseline: expected (frames, electrodes, bands), got {x.shape}")
    top = x.max(axis=2, keepdims=True)  # log-mean-exp over bands, stable
    env = (top + np.log(np.exp(x - top).mean(axis=2, keepdims=True)))[..., 0]  # (T, C)
    loud = env.mean(axis=1)
    lo, hi = float(loud.min()), float(loud.max())
    active = np.flatnonzero(loud >= lo + 0.5 * (hi - lo))
    first, last = max(int(active[0]) - 1, 0), min(int(active[-1]) + 1, len(env) - 1)
    region = env[first : last + 1]
    region = region - region.mean(axis=0, keepdims=True)
    if len(region) == 1:
        return np.repeat(region.T, frames, axis=1).ravel().astype(np.float32)
    src = np.linspace(0.0, 1.0, len(region))
    dst = np.linspace(0.0, 1.0, frames)
    out = np.stack([np.interp(dst, src, region[:, c]) for c in range(region.shape[1])])
    return out.ravel().astype(np.float32)


def split_matrix(split: ProcessedSplit) -> tuple[np.ndarray, np.ndarray]:
    """Envelope features and label ids of every utterance of ``split``."""
    rows = []
    for offset, length, _ in split.index:
        rows.append(envelope_features(split.features[int(offset) : int(offset + length)]))
    return np.stack(rows), np.asarray(split.labels, dtype=np.int64)


@dataclass
class BaselineScore:
    """The baseline on one split: what it scored and how long fitting took."""

    name: str
    split: str
    accuracy: float
    macro_f1: float
    fit_seconds: float
    num_train: int
    predictions: np.ndarray  # label id per utterance of the split

    def summary(self) -> dict[str, Any]:
        """The JSON-friendly part (``metrics.json``'s ``baseline`` entry)."""
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "fit_seconds": round(self.fit_seconds, 3),
            "num_train": self.num_train,
        }


class EnvelopeBaseline:
    """Envelope features + standardised logistic regression (scikit-learn)."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.pipeline = make_pipeline(
            StandardScaler(), LogisticRegression(C=1.0, max_iter=3000, random_state=seed)
        )

    def fit(self, x: np.ndarray, y: np.ndarray, source: str = "train split") -> EnvelopeBaseline:
        """Fit on envelope features ``x`` and label ids ``y``."""
        if len(np.unique(y)) < 2:
            raise DataError(f"{source}: the baseline needs at least 2 classes in training")
        with warnings.catch_warnings():  # convergence chatter; the score says what matters
            warnings.simplefilter("ignore")
            self.pipeline.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Label id per row of ``x``."""
        return np.asarray(self.pipeline.predict(x), dtype=np.int64)


def score_baseline(processed_dir: str, split: str = "test", seed: int = 0) -> BaselineScore:
    """Fit the baseline on ``processed_dir``'s train split and score it on ``split``."""
    start = time.perf_counter()
    train = ProcessedSplit(processed_dir, "train")
    x_train, y_train = split_matrix(train)
    model = EnvelopeBaseline(seed).fit(x_train, y_train, f"{processed_dir} (train split)")
    fit_seconds = time.perf_counter() - start
    target = ProcessedSplit(processed_dir, split)
    x, y = split_matrix(target)
    pred = model.predict(x)
    cm = confusion_matrix(y, pred, len(train.label_names))
    score = BaselineScore(
        name=NAME,
        split=split,
        accuracy=accuracy(cm),
        macro_f1=macro_f1(cm),
        fit_seconds=fit_seconds,
        num_train=len(y_train),
        predictions=pred,
    )
    log.info(
        "baseline on %s: accuracy %.4f macro-F1 %.4f (fitted on %d utterances in %.1f s)",
        split,
        score.accuracy,
        score.macro_f1,
        score.num_train,
        fit_seconds,
    )
    return score
