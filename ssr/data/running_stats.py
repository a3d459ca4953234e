"""Per-channel mean and standard deviation of EMG, accumulated one recording at a time."""

from __future__ import annotations

import numpy as np


class RunningStats:
    """Per-channel mean and standard deviation, updated one recording at a time (Chan et al.)."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)

    def add(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n == 0:
            return
        mean = x.mean(axis=0, dtype=np.float64)
        m2 = np.square(x - mean, dtype=np.float64).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += m2 + np.square(delta) * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.count:
            raise ValueError("no samples")
        return self.mean.copy(), np.sqrt(self.m2 / self.count)
