"""Named profiles of how recording sessions differ in the synthetic generator
(:mod:`ssr.data.synth_model`): a light module, so the CLI lists them without loading scipy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SessionProfile:
    """The ranges session (and speaker) parameters are drawn from; ``default`` is the model of
    the module docstring, and its data are byte-identical to what the generator made before
    profiles existed (the other profiles draw their extra parameters from separate streams)."""

    description: str
    gain_sigma: float = 0.3  # per-channel gain, lognormal sigma
    shift: float = 0.75  # sub-electrode shift of the array, +- electrode spacings
    roll: int = 0  # whole-electrode displacement of the array, up to +- this many electrodes
    crosstalk: tuple[float, float] = (0.05, 0.2)  # neighbour mixing, uniform range
    hum_uv: tuple[float, float] = (4.0, 15.0)  # powerline hum at the fundamental, uniform range
    synergy: Literal["sparse", "dense"] = "sparse"  # gestures: few muscles, or all (gamma)
    spectral_sigma: float = 0.0  # per session, each muscle's band edges scaled (lognormal)
    rate_sigma: float = 0.0  # per session (speaker-like), speaking rate (lognormal sigma)
    overlap: tuple[float, float] = (0.7, 0.7)  # per session, gesture onset step / duration


PROFILES: dict[str, SessionProfile] = {
    "default": SessionProfile("sub-electrode shifts, moderate gain spread, crosstalk and hum"),
    "displaced": SessionProfile(
        "the array displaced by up to one whole electrode per session, broad gain spread "
        "(sigma 0.6), strong crosstalk (0.15-0.4) and hum (10-40 uV)",
        gain_sigma=0.6,
        shift=0.5,
        roll=1,
        crosstalk=(0.15, 0.4),
        hum_uv=(10.0, 40.0),
    ),
    "speaker": SessionProfile(
        "dense muscle synergies, each muscle's spectral peak moved per session (sigma 0.3), "
        "speaker-like speaking rate (sigma 0.25) and coarticulation (0.5-0.9) per session, "
        "little crosstalk (0-0.05) and hum (1-5 uV)",
        crosstalk=(0.0, 0.05),
        hum_uv=(1.0, 5.0),
        synergy="dense",
        spectral_sigma=0.3,
        rate_sigma=0.25,
        overlap=(0.5, 0.9),
    ),
}
