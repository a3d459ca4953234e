"""Signal conditioning for sEMG: powerline notches plus a Butterworth band-pass, zero-phase."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import signal


@dataclass(frozen=True)
class FilterParams:
    """Parameters of the notch + band-pass cascade (the ``data.*`` keys of the same names)."""

    sampling_rate: float
    powerline_freq: float
    notch_harmonics: int
    notch_q: float
    bandpass_low: float
    bandpass_high: float
    filter_order: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def notch_frequencies(params: FilterParams) -> list[float]:
    """Powerline frequency and its multiples (``notch_harmonics`` of them) below Nyquist."""
    nyquist = params.sampling_rate / 2
    freqs = [params.powerline_freq * k for k in range(1, params.notch_harmonics + 1)]
    return [f for f in freqs if f < nyquist]


def design_sos(params: FilterParams) -> np.ndarray:
    """Second-order sections of the whole cascade: every notch, then the band-pass."""
    sections = []
    for freq in notch_frequencies(params):
        b, a = signal.iirnotch(freq, params.notch_q, fs=params.sampling_rate)
        sections.append(signal.tf2sos(b, a))
    sections.append(
        signal.butter(
            params.filter_order,
            [params.bandpass_low, params.bandpass_high],
            btype="bandpass",
            fs=params.sampling_rate,
            output="sos",
        )
    )
    return np.concatenate(sections, axis=0)


def apply_sos(sos: np.ndarray, emg: np.ndarray) -> np.ndarray:
    """Zero-phase filter all channels of ``emg`` (time, channels) at once along time (float64)."""
    x = np.asarray(emg, dtype=np.float64)
    default_pad = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    padlen = int(min(default_pad, x.shape[0] - 1))
    out: np.ndarray = signal.sosfiltfilt(sos, x, axis=0, padlen=padlen)
    return out
