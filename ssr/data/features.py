"""Raw EMG (time, channels) -> model-ready spectral features (frames, channels, bands).

The same :class:`FeatureExtractor` runs in ``ssr preprocess`` and inside a shipped model, so
raw EMG given to a served model is conditioned exactly as the training data was:

1. notch at the powerline frequency and its harmonics, Butterworth band-pass (zero-phase);
2. per-channel normalisation with the training split's mean and standard deviation;
3. Hann-windowed frames (``window_size``, ``hop_length``), power spectrum (scaled so a
   unit-variance white signal gives 1 per bin), DC bin dropped;
4. the ``window_size/2`` bins averaged into ``input_size`` bands, then ``log``.

Everything is vectorised over channels and frames (strided frame view + one batched FFT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from ssr.config import Config
from ssr.data.filters import FilterParams, apply_sos, design_sos
from ssr.errors import DataError

LOG_EPS = 1e-6
PREPROCESSING_KEYS = (
    "sampling_rate",
    "window_size",
    "hop_length",
    "powerline_freq",
    "notch_harmonics",
    "notch_q",
    "bandpass_low",
    "bandpass_high",
    "filter_order",
)


def num_frames(num_samples: int, window_size: int, hop_length: int) -> int:
    """Frames of an utterance: ``1 + (T - window) // hop`` (0 when shorter than a window)."""
    if num_samples < window_size:
        return 0
    return 1 + (num_samples - window_size) // hop_length


class FeatureExtractor:
    """Filtering, normalisation and log band-power features, as fitted by preprocessing."""

    def __init__(
        self,
        preprocessing: dict[str, Any],
        input_size: int,
        num_channels: int,
        mean: Sequence[float] | np.ndarray,
        std: Sequence[float] | np.ndarray,
    ) -> None:
        missing = [k for k in PREPROCESSING_KEYS if k not in preprocessing]
        if missing:
            raise DataError(f"preprocessing parameters missing {missing}")
        self.preprocessing = {k: preprocessing[k] for k in PREPROCESSING_KEYS}
        self.window_size = int(preprocessing["window_size"])
        self.hop_length = int(preprocessing["hop_length"])
        self.sampling_rate = float(preprocessing["sampling_rate"])
        self.input_size = int(input_size)
        self.num_channels = int(num_channels)
        bins = self.window_size // 2
        if self.input_size < 1 or bins % self.input_size:
            raise DataError(f"input_size {input_size} must divide window_size/2 ({bins})")
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        if self.mean.shape != (self.num_channels,) or self.std.shape != (self.num_channels,):
            raise DataError(
                f"normalisation statistics must have {self.num_channels} values per channel, "
                f"got mean {self.mean.shape}, std {self.std.shape}"
            )
        if not np.all(self.std > 0):
            raise DataError(f"normalisation std must be positive, got {self.std.tolist()}")
        self.filter_params = FilterParams(
            sampling_rate=self.sampling_rate,
            powerline_freq=float(preprocessing["powerline_freq"]),
            notch_harmonics=int(preprocessing["notch_harmonics"]),
            notch_q=float(preprocessing["notch_q"]),
            bandpass_low=float(preprocessing["bandpass_low"]),
            bandpass_high=float(preprocessing["bandpass_high"]),
            filter_order=int(preprocessing["filter_order"]),
        )
        self.sos = design_sos(self.filter_params)
        window = signal.get_window("hann", self.window_size).astype(np.float32)
        self.window = window
        self._power_scale = np.float32(1.0 / float(np.sum(window.astype(np.float64) ** 2)))

    @classmethod
    def from_config(
        cls, cfg: Config, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray
    ) -> FeatureExtractor:
        """An extractor with the config's ``data.*`` parameters and the given statistics."""
        data = cfg.data.model_dump()
        return cls(
            {k: data[k] for k in PREPROCESSING_KEYS},
            cfg.model.input_size,
            cfg.model.num_channels,
            mean,
            std,
        )

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> FeatureExtractor:
        """The extractor that produced a processed data set, from its ``manifest.json``."""
        try:
            norm = manifest["normalization"]
            return cls(
                manifest["preprocessing"],
                manifest["input_size"],
                manifest["num_channels"],
                norm["mean"],
                norm["std"],
            )
        except (KeyError, TypeError) as exc:
            raise DataError(f"manifest lacks feature-extraction field {exc}") from None

    def to_manifest(self) -> dict[str, Any]:
        """The manifest fields :meth:`from_manifest` needs (JSON-serialisable)."""
        return {
            "preprocessing": dict(self.preprocessing),
            "input_size": self.input_size,
            "num_channels": self.num_channels,
            "sampling_rate": self.sampling_rate,
            "normalization": {"mean": self.mean.tolist(), "std": self.std.tolist()},
        }

    @property
    def min_samples(self) -> int:
        """Shortest input (samples) that yields a frame."""
        return self.window_size

    def num_frames(self, num_samples: int) -> int:
        return num_frames(num_samples, self.window_size, self.hop_length)

    def check(self, emg: np.ndarray, source: str = "<array>") -> None:
        """Raise :class:`DataError` naming ``source`` if ``emg`` cannot be featurised."""
        if emg.ndim != 2:
            raise DataError(f"{source}: EMG must be 2-D (time, channels), got shape {emg.shape}")
        if emg.shape[1] != self.num_channels:
            raise DataError(
                f"{source}: {emg.shape[1]} channels, expected {self.num_channels} "
                f"(shape {emg.shape})"
            )
        if emg.shape[0] < self.min_samples:
            raise DataError(
                f"{source}: {emg.shape[0]} samples, shorter than one window ({self.min_samples})"
            )
        if not np.all(np.isfinite(emg)):
            raise DataError(f"{source}: contains NaN or infinite samples")

    def filter(self, emg: np.ndarray) -> np.ndarray:
        """Notch + band-pass every channel (zero-phase); float32 (time, channels)."""
        return apply_sos(self.sos, emg).astype(np.float32)

    def features_from_filtered(self, filtered: np.ndarray) -> np.ndarray:
        """Normalise filtered EMG and compute log band powers; float32 (frames, channels, bands)."""
        x = (filtered - self.mean) / self.std
        frames = sliding_window_view(x, self.window_size, axis=0)[:: self.hop_length]
        spectrum = scipy.fft.rfft(frames * self.window, axis=-1)  # (frames, C, window/2+1)
        power = (spectrum.real**2 + spectrum.imag**2)[..., 1:] * self._power_scale
        n, c, bins = power.shape
        bands = power.reshape(n, c, self.input_size, bins // self.input_size).mean(axis=-1)
        out: np.ndarray = np.log(bands + np.float32(LOG_EPS)).astype(np.float32)
        return out

    def __call__(self, emg: np.ndarray, source: str = "<array>") -> np.ndarray:
        """Features of raw EMG (time, channels): float32 (frames, channels, input_size)."""
        emg = np.asarray(emg)
        self.check(emg, source)
        return self.features_from_filtered(self.filter(emg))
