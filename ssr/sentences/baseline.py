"""The simple strong baseline of ``task: sentences``: a linear frame classifier trained with CTC.

From the same processed features the model sees (log band powers, frames x electrodes x bands):

1. each frame's log powers centred per utterance (the mean over the utterance's frames of every
   electrode and band removed, like the model's ``centring: band``), then scaled per electrode
   and band by the training split's standard deviation;
2. every ``subsample``-th frame (frames 0, s, 2s, ...: the CTC model's output frames, see
   :func:`ssr.sentences.units.output_frames`) with its ``+-CONTEXT`` neighbours (zeros beyond
   the utterance's ends) mapped linearly to the units' logits: one linear layer over the
   stacked frames, computed as a strided 1-D convolution so the stack is never materialised.

Trained with CTC (blank 0) plus an L2 penalty on the weights by Adam for a fixed number of
steps on mini-batches drawn by a private generator, so a seed gives the same model on a CPU.
The penalty matters: most of the stacked inputs carry no unit, and Adam's normalised steps move
their weights as fast as the informative ones, so without it a small training set is memorised
(its CTC loss near 0, held-out transcripts full of insertions). It needs no GPU and fits in seconds
to a minute; a model that does not beat it has learned little more than which (electrode, band)
bursts mark which character.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssr.data.processed import ProcessedSplit
from ssr.errors import DataError

log = logging.getLogger(__name__)

CONTEXT = 6  # neighbour frames each side (+-60 ms at a 10 ms hop)
STEPS = 200  # optimiser steps
BATCH_SIZE = 32  # utterances per step (the whole split when smaller)
LEARNING_RATE = 0.01
L2 = 0.1  # penalty on the squared weights, added to the CTC loss
NAME = f"linear frame classifier (+-{CONTEXT} frames, band-centred) + CTC"


def centre(features: np.ndarray) -> np.ndarray:
    """One utterance's (T, C, F) log powers as (T, C*F) float32, centred over its frames."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] < 1:
        raise DataError(f"baseline: expected (frames, electrodes, bands), got {x.shape}")
    x = x.reshape(x.shape[0], -1)
    centred: np.ndarray = x - x.mean(axis=0, keepdims=True)
    return centred


def _pad(utterances: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred utterances (T_i, D) -> zero-padded (B, T, D) and lengths (B,)."""
    lengths = torch.tensor([len(u) for u in utterances], dtype=torch.long)
    x = torch.zeros(len(utterances), int(lengths.max()), utterances[0].shape[1])
    for i, u in enumerate(utterances):
        x[i, : len(u)] = torch.from_numpy(u)
    return x, lengths


@dataclass
class LinearCTC:
    """The fitted baseline: per-dimension scale, the linear map and the output units."""

    weight: torch.Tensor  # (U, D, 2 * context + 1)
    bias: torch.Tensor  # (U,)
    scale: torch.Tensor  # (D,) standard deviation of the centred training frames
    labels: list[str]
    subsample: int
    fit_seconds: float = 0.0

    @property
    def context(self) -> int:
        """Neighbour frames each side that the linear map sees."""
        return (self.weight.shape[-1] - 1) // 2

    def logits(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Centred, zero-padded (B, T, D) -> logits (B, T', U), T' = output frames of T."""
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        h = (x / self.scale) * valid[:, :, None].to(x.dtype)
        out = F.conv1d(
            h.transpose(1, 2), self.weight, self.bias, stride=self.subsample, padding=self.context
        )
        return out.transpose(1, 2)  # output frame j looks at frames j*s-context..j*s+context

    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """One utterance's (T, C, F) features -> float32 (T', U) log-probabilities."""
        x, lengths = _pad([centre(features)])
        if x.shape[-1] != self.scale.shape[0]:
            raise DataError(
                f"baseline: {x.shape[-1]} values per frame, fitted on {self.scale.shape[0]}"
            )
        with torch.no_grad():
            out = self.logits(x, lengths).log_softmax(-1)[0]
        return out.numpy().astype(np.float32)


def _centred(split: ProcessedSplit, i: int) -> np.ndarray:
    offset, length, _ = (int(v) for v in split.index[i])
    return centre(split.features[offset : offset + length])


def _scale(split: ProcessedSplit) -> torch.Tensor:
    """The standard deviation of each value of the centred frames, one utterance at a time."""
    squares = np.zeros(int(np.prod(split.features.shape[1:])), dtype=np.float64)
    for i in range(len(split)):
        squares += np.square(_centred(split, i), dtype=np.float64).sum(axis=0)
    return torch.from_numpy(np.sqrt(squares / max(int(split.lengths.sum()), 1)) + 1e-3).float()


def _target(split: ProcessedSplit, i: int) -> torch.Tensor:
    target = split[i][1]
    if not isinstance(target, torch.Tensor):
        raise DataError(f"{split.root}: utterance {split.ids[i]} has no transcript")
    return target


def fit_linear_ctc(
    train: ProcessedSplit, subsample: int, seed: int = 0, steps: int = STEPS
) -> LinearCTC:
    """Fit the baseline on ``train`` (a sentences split) for the model's ``subsample``; the
    seed draws the initial weights and the mini-batches (a private generator: the global torch
    random state is left alone)."""
    if train.task != "sentences":
        raise DataError(f"{train.root}: the CTC baseline needs a sentences data set")
    if subsample < 1 or steps < 1:
        raise ValueError(f"subsample and steps must be >= 1, got {subsample}, {steps}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    targets = [_target(train, i) for i in range(len(train))]
    scale = _scale(train)
    units, dims, width = len(train.label_names), scale.shape[0], 2 * CONTEXT + 1
    model = LinearCTC(
        weight=(torch.randn(units, dims, width, generator=gen) * 0.01).requires_grad_(),
        bias=torch.zeros(units, requires_grad=True),
        scale=scale,
        labels=train.label_names,
        subsample=subsample,
    )
    optimiser = torch.optim.Adam([model.weight, model.bias], lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / steps)
    batch = min(BATCH_SIZE, len(train))
    order = torch.randperm(len(train), generator=gen)
    position = 0
    for _ in range(steps):
        if position + batch > len(order):
            order, position = torch.randperm(len(train), generator=gen), 0
        chosen = order[position : position + batch].tolist()
        position += batch
        x, lengths = _pad([_centred(train, i) for i in chosen])
        ys = [targets[i] for i in chosen]
        log_probs = model.logits(x, lengths).log_softmax(-1).transpose(0, 1)  # (T', B, U)
        loss = (
            F.ctc_loss(
                log_probs,
                torch.cat(ys),
                torch.div(lengths + subsample - 1, subsample, rounding_mode="floor"),
                torch.tensor([len(y) for y in ys]),
                blank=0,
                zero_infinity=True,
            )
            + L2 * model.weight.pow(2).sum()
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    model.weight = model.weight.detach()
    model.bias = model.bias.detach()
    model.fit_seconds = time.perf_counter() - start
    log.info(
        "sentence baseline fitted on %d utterances in %.1f s (last loss %.3f)",
        len(train),
        model.fit_seconds,
        float(loss.detach()),
    )
    return model


def baseline_emissions(
    processed_dir: str, split: str, subsample: int, seed: int = 0
) -> tuple[list[np.ndarray], list[str]]:
    """Fit on ``processed_dir``'s train split; the (T', U) log-probs and the reference text of
    every utterance of ``split``."""
    model = fit_linear_ctc(ProcessedSplit(processed_dir, "train"), subsample, seed)
    target = ProcessedSplit(processed_dir, split)
    emissions = [
        model.log_probs(target.features[int(offset) : int(offset + length)])
        for offset, length, _ in target.index
    ]
    return emissions, list(target.texts)
