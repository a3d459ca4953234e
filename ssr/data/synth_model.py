"""The generative model of synthetic silent-speech sEMG, built like the real thing.

Generative model (all randomness from one seed, so the same seed gives byte-identical files):

* **Muscles.** A few face/neck muscles sit along the electrode strip; each has a spatial
  footprint over the channels (volume conduction) and its own motor-unit spectrum (white noise
  band-limited inside 20-450 Hz). Their signal is that noise, amplitude-modulated by activation.
* **Gestures and words.** A small inventory of articulatory gestures, each a muscle synergy
  (a few muscles at given levels) with a typical duration. A word is a sequence of 2-5
  gestures; an utterance of it has speaking-rate variation, per-gesture duration and timing
  jitter, coarticulation (overlapping gestures), effort variation and occasional
  non-speech bursts (swallows, lip presses) at random times. Part of the vocabulary
  (``permuted``) is made of another word's gestures in a different order (as "top"/"pot"
  share articulators), so a model that ignores the order of events cannot tell them apart.
* **Sessions.** Each recording session re-attaches the electrodes: its own per-channel gains,
  a small shift of the array relative to the muscles, crosstalk between neighbouring channels,
  powerline hum (with harmonics) of its own strength and phase, DC offsets and noise floor.
* **Per utterance.** Baseline wander, sparse motion artefacts (spikes and decaying steps) and
  white sensor noise.
* **Profiles.** How much sessions (and the speaker) differ is a named :class:`SessionProfile`
  (``PROFILES``): ``default`` is the model above; ``displaced`` moves the whole array by up to
  one electrode, with broader gain spread, more crosstalk and stronger hum; ``speaker`` draws
  dense muscle synergies, moves each muscle's spectral peak per session, changes speaking rate
  and coarticulation per session, with little crosstalk and hum. They exist so that a recipe is
  tuned on some profiles and checked on others, not fitted to one generator.

Validation and test use sessions never seen in training, so a model must generalise across
electrode placements, as on real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import signal

from ssr.data.synth_profiles import PROFILES, SessionProfile
from ssr.errors import ConfigError

WORDS = (
    "yes", "no", "up", "down", "left", "right", "stop", "go", "on", "off",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero",
    "open", "close", "help", "water", "more", "less", "call", "home", "light", "music",
    "play", "pause", "next", "back", "hello", "thanks", "please", "wait", "ready", "done",
)  # fmt: skip
NUM_MUSCLES = 6
NUM_GESTURES = 12


@dataclass
class SynthOptions:
    """What to generate; defaults take a few seconds and match ``configs/training_config.yaml``."""

    vocab: int = 10
    per_word: int = 32
    sessions: int = 9
    train_sessions: int = 5
    test_sessions: int | None = None  # default: the held-out sessions after validation's
    val_sessions: int | None = None  # default: 2 where 3 or more sessions are held out, else 1
    profile: str = "default"  # a name in PROFILES
    permuted: float = 0.4
    fmt: Literal["native", "gaddy"] = "native"
    seed: int = 0
    min_duration: float = 1.0
    max_duration: float = 2.0
    sampling_rate: float = 1000.0
    channels: int = 8
    powerline_freq: float = 60.0

    @property
    def num_val_sessions(self) -> int:
        """Validation sessions: ``val_sessions``; else what ``test_sessions`` leaves of the
        held-out ones; else 2 where at least 3 are held out (model selection should not trust
        one session), else 1."""
        held_out = self.sessions - self.train_sessions
        if self.val_sessions is not None:
            return self.val_sessions
        if self.test_sessions is not None:
            return held_out - self.test_sessions
        return 2 if held_out >= 3 else 1

    @property
    def num_test_sessions(self) -> int:
        """Test sessions: ``test_sessions``, or the held-out sessions after validation's."""
        if self.test_sessions is not None:
            return self.test_sessions
        return self.sessions - self.train_sessions - self.num_val_sessions

    @property
    def session_profile(self) -> SessionProfile:
        return PROFILES[self.profile]

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible options."""
        checks = [  # (wrong, what is wrong), in the order they are reported
            (self.vocab < 2, f"vocab must be >= 2, got {self.vocab}"),
            (
                self.train_sessions < 1
                or self.num_test_sessions < 1
                or self.num_val_sessions < 1
                or self.train_sessions + self.num_val_sessions + self.num_test_sessions
                != self.sessions,
                f"need train_sessions >= 1 and held-out sessions for validation (>= 1) and "
                f"test (>= 1); got sessions={self.sessions}, train_sessions="
                f"{self.train_sessions}, val_sessions={self.num_val_sessions}, "
                f"test_sessions={self.num_test_sessions}",
            ),
            (
                self.profile not in PROFILES,
                f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}",
            ),
            (
                not 0.0 <= self.permuted <= 1.0,
                f"permuted must lie in [0, 1], got {self.permuted}",
            ),
            (
                self.per_word < self.sessions,
                f"per_word ({self.per_word}) must be >= sessions ({self.sessions}) so every "
                f"session has every word",
            ),
            (
                not 0.3 <= self.min_duration <= self.max_duration,
                f"need 0.3 <= min_duration <= max_duration, got {self.min_duration}, "
                f"{self.max_duration}",
            ),
            (
                self.sampling_rate < 1000,
                f"sampling_rate must be >= 1000 Hz, got {self.sampling_rate}",
            ),
            (self.channels < 2, f"channels must be >= 2, got {self.channels}"),
            (
                self.fmt not in ("native", "gaddy"),
                f"format must be native or gaddy, got {self.fmt!r}",
            ),
            (
                self.powerline_freq <= 0,
                f"powerline_freq must be positive, got {self.powerline_freq}",
            ),
        ]
        problems = [message for wrong, message in checks if wrong]
        if problems:
            raise ConfigError("synth: " + "; ".join(problems))


@dataclass
class World:
    """Speaker anatomy and language: shared by all sessions."""

    muscle_pos: np.ndarray  # (M,) position along the electrode strip, in electrode spacings
    muscle_width: np.ndarray  # (M,) footprint width
    muscle_sos: list[np.ndarray]  # per muscle: motor-unit spectrum filter
    gesture_act: np.ndarray  # (G, M) synergy: activation level of each muscle
    gesture_dur: np.ndarray  # (G,) typical duration, seconds
    words: dict[str, list[int]]  # word -> gesture sequence
    muscle_band: np.ndarray  # (M, 2) band edges of each muscle's spectrum, Hz


@dataclass
class Session:
    gains: np.ndarray  # (C,)
    shift: float
    crosstalk: float
    mixing: np.ndarray  # (C, M): muscles -> channels, incl. shift, crosstalk and gains
    hum_amp: np.ndarray  # (C,) microvolts at the fundamental
    hum_phase: np.ndarray  # (3, C)
    offset: np.ndarray  # (C,) DC offset, microvolts
    noise: float  # sensor noise std, microvolts
    effort: float
    muscle_sos: list[np.ndarray] | None = None  # this session's muscle spectra (None: world's)
    rate: float = 1.0  # the speaker's speaking rate in this session (duration factor)
    overlap: float = 0.7  # gesture onset step as a fraction of the previous gesture's duration

    def describe(self) -> dict[str, Any]:
        return {
            "gains": [round(float(g), 4) for g in self.gains],
            "shift": round(self.shift, 4),
            "crosstalk": round(self.crosstalk, 4),
            "hum_uv": [round(float(a), 2) for a in self.hum_amp],
            "rate": round(self.rate, 4),
            "overlap": round(self.overlap, 4),
        }


def rng_for(seed: int, *path: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *path]))


def vocabulary(size: int) -> list[str]:
    """The first ``size`` words of a fixed list (``word<N>`` beyond it)."""
    return [WORDS[i] if i < len(WORDS) else f"word{i}" for i in range(size)]


def make_world(opts: SynthOptions) -> World:
    rng = rng_for(opts.seed, 0)
    c, m, g = opts.channels, NUM_MUSCLES, NUM_GESTURES
    pos = np.sort(rng.uniform(-0.5, c - 0.5, m))
    width = rng.uniform(0.8, 1.8, m)
    band = np.array([[rng.uniform(20, 40), rng.uniform(150, 400)] for _ in range(m)])
    sos = [_band_sos(lo, hi, opts.sampling_rate) for lo, hi in band]
    act = np.zeros((g, m))
    for k in range(g):
        active = rng.choice(m, size=rng.integers(1, 4), replace=False)
        act[k, active] = rng.uniform(0.4, 1.0, active.size)
        act[k] += rng.uniform(0.0, 0.08, m)  # co-contraction of the others
    if opts.session_profile.synergy == "dense":  # every muscle takes part, gamma-distributed
        dense = rng_for(opts.seed, 5).gamma(0.7, 1.0, (g, m))
        act = 0.1 + 0.9 * dense / dense.max(axis=1, keepdims=True)
    dur = rng.uniform(0.12, 0.25, g)
    words: dict[str, list[int]] = {}
    seen: set[tuple[int, ...]] = set()
    vocab = vocabulary(opts.vocab)
    reordered = min(int(round(opts.permuted * opts.vocab)), opts.vocab // 2)
    first_reordered = opts.vocab - reordered
    for i, word in enumerate(vocab):
        if i >= first_reordered:  # the gestures of word i - first_reordered, reordered
            seq = _reorder(words[vocab[i - first_reordered]], seen, rng)
            if seq is not None:
                seen.add(tuple(seq))
                words[word] = seq
                continue
        while True:
            n = int(rng.integers(2, 6))
            seq = [int(rng.integers(g))]
            while len(seq) < n:
                nxt = int(rng.integers(g))
                if nxt != seq[-1]:
                    seq.append(nxt)
            if tuple(seq) not in seen:
                seen.add(tuple(seq))
                words[word] = seq
                break
    return World(pos, width, sos, act, dur, words, band)


def _band_sos(low: float, high: float, rate: float) -> np.ndarray:
    """A muscle's motor-unit spectrum: 2nd-order Butterworth band-pass from low to high Hz."""
    sos: np.ndarray = signal.butter(2, [low, high], "bandpass", fs=rate, output="sos")
    return sos


def _reorder(
    seq: list[int], seen: set[tuple[int, ...]], rng: np.random.Generator
) -> list[int] | None:
    """``seq``'s gestures in another order no word has yet (reversed if possible), with no
    gesture twice in a row; None when there is none."""
    candidates = [seq[::-1]] + [[seq[int(j)] for j in rng.permutation(len(seq))] for _ in range(50)]
    for cand in candidates:
        if tuple(cand) not in seen and all(a != b for a, b in zip(cand, cand[1:], strict=False)):
            return cand
    return None


def make_session(opts: SynthOptions, world: World, index: int) -> Session:
    rng = rng_for(opts.seed, 1, index)
    extra = rng_for(opts.seed, 4, index)  # the profile's own draws; default draws none
    prof = opts.session_profile
    c = opts.channels
    gains = rng.lognormal(0.0, prof.gain_sigma, c)
    shift = float(rng.uniform(-prof.shift, prof.shift))
    if prof.roll:  # the whole array sits up to ``roll`` electrodes off
        shift += float(extra.integers(-prof.roll, prof.roll + 1))
    electrodes = np.arange(c) + shift + rng.normal(0.0, 0.1, c)
    dist = (electrodes[:, None] - world.muscle_pos[None, :]) / world.muscle_width[None, :]
    footprint = np.exp(-0.5 * dist**2) + 0.03
    crosstalk = float(rng.uniform(*prof.crosstalk))
    neighbours = np.eye(c) + crosstalk * (np.eye(c, k=1) + np.eye(c, k=-1))
    mixing = gains[:, None] * (neighbours @ footprint)
    session = Session(
        gains=gains,
        shift=shift,
        crosstalk=crosstalk,
        mixing=mixing,
        hum_amp=rng.uniform(*prof.hum_uv) * rng.lognormal(0.0, 0.4, c),
        hum_phase=rng.uniform(0, 2 * np.pi, (3, c)),
        offset=rng.normal(0.0, 30.0, c),
        noise=float(rng.uniform(1.0, 2.0)),
        effort=float(rng.lognormal(0.0, 0.15)),
    )
    if prof.spectral_sigma > 0:  # tissue and contact move each muscle's spectral peak
        scale = extra.lognormal(0.0, prof.spectral_sigma, len(world.muscle_band))
        nyquist = 0.45 * opts.sampling_rate
        session.muscle_sos = [
            _band_sos(
                max(10.0, lo * f), min(nyquist, max(lo * f + 40.0, hi * f)), opts.sampling_rate
            )
            for (lo, hi), f in zip(world.muscle_band, scale, strict=True)
        ]
    if prof.rate_sigma > 0:
        session.rate = float(extra.lognormal(0.0, prof.rate_sigma))
    if prof.overlap[0] != prof.overlap[1]:
        session.overlap = float(extra.uniform(*prof.overlap))
    return session


def bump(t: np.ndarray, start: float, dur: float) -> np.ndarray:
    """Raised-cosine activation from ``start`` lasting ``dur`` seconds."""
    phase = np.clip((t - start) / dur, 0.0, 1.0)
    return np.sin(np.pi * phase) ** 2


def utterance(
    opts: SynthOptions,
    world: World,
    session: Session,
    sidx: int,
    uidx: int,
    word: str | None,
) -> np.ndarray:
    """One utterance of ``word`` (None: rest) in ``session``: float32 (time, channels), uV."""
    rng = rng_for(opts.seed, 2, sidx, uidx)
    fs = opts.sampling_rate
    seq = world.words[word] if word is not None else []
    rate = rng.lognormal(0.0, 0.2) * session.rate
    durs = world.gesture_dur[seq] * rate * rng.lognormal(0.0, 0.12, len(seq))
    onsets = np.zeros(len(seq))
    for i in range(1, len(seq)):
        step = durs[i - 1] * (session.overlap + rng.normal(0.0, 0.05)) + rng.normal(0.0, 0.015)
        onsets[i] = onsets[i - 1] + max(step, 0.03)
    speech = onsets[-1] + durs[-1] if seq else 0.0
    total = max(rng.uniform(opts.min_duration, opts.max_duration), speech + 0.3)
    start = rng.uniform(0.1, total - speech - 0.1)
    n = int(round(total * fs))
    t = np.arange(n) / fs

    envelope = np.full((n, NUM_MUSCLES), 0.03)
    for g, onset, dur in zip(seq, onsets + start, durs, strict=True):
        level = session.effort * rng.lognormal(0.0, 0.25)
        envelope += level * bump(t, onset, dur)[:, None] * world.gesture_act[g][None, :]
    add_burst(envelope, t, total, rng)
    return render(opts, world, session, envelope, rng)


def add_burst(envelope: np.ndarray, t: np.ndarray, total: float, rng: np.random.Generator) -> None:
    """Sometimes (30 %) add a non-speech burst (swallow, lip press) to ``envelope``."""
    if rng.random() < 0.3:
        muscle = rng.integers(NUM_MUSCLES)
        envelope[:, muscle] += rng.uniform(0.2, 0.5) * bump(
            t, rng.uniform(0, total - 0.2), rng.uniform(0.1, 0.3)
        )


def render(
    opts: SynthOptions,
    world: World,
    session: Session,
    envelope: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The recording of muscle activations ``envelope`` (time, muscles) in ``session``: motor-unit
    noise mixed onto the channels, hum, DC offset and wander, motion artefacts and sensor noise;
    float32 (time, channels), uV."""
    fs = opts.sampling_rate
    n = envelope.shape[0]
    t = np.arange(n) / fs
    sources = np.empty((n, NUM_MUSCLES))
    for m, sos in enumerate(session.muscle_sos or world.muscle_sos):
        noise = signal.sosfilt(sos, rng.standard_normal(n + 200))[200:]
        sources[:, m] = noise / noise.std()
    emg = (40.0 * envelope * sources) @ session.mixing.T  # (n, C)

    hum_scale = rng.lognormal(0.0, 0.2)
    for k, rel in enumerate((1.0, 0.3, 0.15)):
        arg = 2 * np.pi * (k + 1) * opts.powerline_freq * t[:, None] + session.hum_phase[k]
        emg += hum_scale * rel * session.hum_amp * np.sin(arg)

    c = opts.channels
    wander_f = rng.uniform(0.1, 0.8, (2, c))
    wander_a = rng.uniform(1.0, 4.0, (2, c))
    wander_p = rng.uniform(0, 2 * np.pi, (2, c))
    emg += session.offset + (
        wander_a[:, None, :] * np.sin(2 * np.pi * wander_f[:, None, :] * t[None, :, None]
                                      + wander_p[:, None, :])
    ).sum(axis=0)  # fmt: skip

    for _ in range(rng.poisson(0.4)):  # motion artefacts on a few neighbouring channels
        first = int(rng.integers(c))
        chans = slice(first, min(c, first + int(rng.integers(1, 4))))
        at = int(rng.integers(n))
        if rng.random() < 0.5:
            width = int(rng.uniform(0.01, 0.03) * fs)
            shape = np.sin(np.linspace(0, 2 * np.pi, width)) * rng.uniform(50, 200)
            stop = min(n, at + width)
            emg[at:stop, chans] += shape[: stop - at, None]
        else:
            tau = rng.uniform(0.2, 0.5) * fs
            step = rng.uniform(20, 80) * rng.choice([-1.0, 1.0])
            emg[at:, chans] += (step * np.exp(-np.arange(n - at) / tau))[:, None]

    emg += rng.normal(0.0, session.noise, emg.shape)
    out: np.ndarray = emg.astype(np.float32)
    return out
