"""Synthetic silent-speech sentences (``ssr data synth --task sentences``).

The muscles, gesture synergies, sessions, artefacts and profiles are those of
:mod:`ssr.data.synth_model`; the text is from :mod:`ssr.data.synth_text`. A sentence is spelled
letter by letter with articulatory gestures, and several letters share one gesture, as b, p and
m share the lips (:data:`LETTER_CLASSES`): "bat" and "pan" look alike and only the language
model can tell them apart. Each letter is a gesture of about 100-140 ms (its class's typical
duration, scaled by a speaking rate per utterance and per session); neighbouring gestures
overlap and each is coloured by its neighbours' synergies (co-articulation), within a word and
across word boundaries; between words there is a short pause (50-200 ms) or none, and silence
at the start and end. The apostrophe has no gesture of its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssr.data.formats import write_gaddy
from ssr.data.synth import SUMMARY, check_out_dir, split_sessions, write_utterance
from ssr.data.synth_model import (
    NUM_MUSCLES,
    Session,
    SynthOptions,
    World,
    add_burst,
    bump,
    make_session,
    make_world,
    render,
    rng_for,
)
from ssr.data.synth_text import Grammar, choose_held_out, draw_unique, lm_lines, load_word_list
from ssr.errors import ConfigError
from ssr.fsutil import atomic_dir
from ssr.progress import progress_bar

LETTER_CLASSES = ("bpm", "fv", "tdnl", "szcx", "kgq", "jy", "rw", "h", "a", "ei", "ou")
LM_TEXT = "lm_text.txt"
_CLASS_OF = {ch: k for k, letters in enumerate(LETTER_CLASSES) for ch in letters}
_OWN_ENTRIES = {"train", "val", "test", "processed", SUMMARY, LM_TEXT}
_STREAM = 6  # random streams 6.. (synth_model uses 0-5): 6 letter durations, 7 text, 8 signals


@dataclass
class SentenceOptions:
    """What ``ssr data synth --task sentences`` generates (sessions as for words)."""

    sentences: int = 80  # per session
    unseen_words: float = 0.1  # share of the content words held out of training sentences
    open_share: float = 0.3  # share of val/test sentences holding a held-out word
    lm_sentences: int = 3000  # grammar sentences in lm_text.txt (none equal to a val/test one)
    sessions: int = 9
    train_sessions: int = 5
    test_sessions: int | None = None
    val_sessions: int | None = None
    profile: str = "default"
    fmt: Literal["native", "gaddy"] = "native"
    seed: int = 0
    sampling_rate: float = 1000.0
    channels: int = 8
    powerline_freq: float = 60.0

    def signal_options(self) -> SynthOptions:
        """The word generator's options for the shared signal model (sessions, profile)."""
        shared = {f.name for f in fields(SynthOptions)} & {f.name for f in fields(self)}
        opts = SynthOptions(**{k: getattr(self, k) for k in shared})
        opts.per_word = max(opts.per_word, self.sessions)  # unused here; keeps validate quiet
        return opts

    def validate(self) -> None:
        """Raise :class:`ConfigError` for impossible options."""
        self.signal_options().validate()
        checks = [
            (self.sentences < 1, f"sentences must be >= 1 per session, got {self.sentences}"),
            (
                not 0.0 <= self.unseen_words <= 0.5,
                f"unseen_words must lie in [0, 0.5], got {self.unseen_words}",
            ),
            (
                not 0.0 <= self.open_share <= 1.0,
                f"open_share must lie in [0, 1], got {self.open_share}",
            ),
            (
                self.open_share > 0 and self.unseen_words == 0,
                "open_share > 0 needs unseen_words > 0 (no word to hold out)",
            ),
            (self.lm_sentences < 0, f"lm_sentences must be >= 0, got {self.lm_sentences}"),
        ]
        problems = [message for wrong, message in checks if wrong]
        if problems:
            raise ConfigError("synth: " + "; ".join(problems))


def gesture_classes(text: str) -> list[list[int]]:
    """Per word of a normalised ``text``, the gesture class of each letter (apostrophes none)."""
    return [[_CLASS_OF[ch] for ch in word if ch in _CLASS_OF] for word in text.split()]


def letter_durations(seed: int) -> np.ndarray:
    """Typical duration of each letter class's gesture, seconds (100-140 ms)."""
    return rng_for(seed, _STREAM).uniform(0.10, 0.14, len(LETTER_CLASSES))


def _timeline(
    words: list[list[int]], typical: np.ndarray, session: Session, rng: np.random.Generator
) -> tuple[list[tuple[int, float, float, float]], float]:
    """Gestures as (class, onset, duration, blend weight of neighbours) and the end of speech."""
    rate = rng.lognormal(0.0, 0.15) * session.rate
    out: list[tuple[int, float, float, float]] = []
    onset, prev_dur = rng.uniform(0.25, 0.6), 0.0
    for w, word in enumerate(words):
        pause = 0.0 if w == 0 or rng.random() < 0.25 else rng.uniform(0.05, 0.2) * rate
        for i, g in enumerate(word):
            dur = typical[g] * rate * rng.lognormal(0.0, 0.1)
            if out and i == 0 and pause > 0:
                onset += prev_dur + pause
            elif out:
                step = prev_dur * (session.overlap + rng.normal(0.0, 0.05)) + rng.normal(0, 0.01)
                onset += max(step, 0.03)
            blend = 0.05 if i == 0 and pause > 0 else 0.15  # less co-articulation over a pause
            out.append((g, onset, dur, blend))
            prev_dur = dur
    end = onset + prev_dur if out else 0.0
    return out, end


def sentence_utterance(
    opts: SynthOptions,
    world: World,
    session: Session,
    typical: np.ndarray,
    text: str,
    rng: np.random.Generator,
) -> np.ndarray:
    """One utterance of normalised ``text`` ("" : rest) in ``session``: float32 (time, C), uV.
    The signal depends on the text only through its gesture classes and word boundaries."""
    gestures, end = _timeline(gesture_classes(text), typical, session, rng)
    total = end + rng.uniform(0.25, 0.6) if gestures else rng.uniform(1.0, 2.0)
    n = int(round(total * opts.sampling_rate))
    t = np.arange(n) / opts.sampling_rate
    act = world.gesture_act
    envelope = np.full((n, NUM_MUSCLES), 0.03)
    for i, (g, onset, dur, blend) in enumerate(gestures):
        before = act[gestures[i - 1][0]] if i > 0 else act[g]
        after_blend = gestures[i + 1][3] if i + 1 < len(gestures) else 0.0
        after = act[gestures[i + 1][0]] if after_blend else act[g]
        synergy = (1 - blend - after_blend) * act[g] + blend * before + after_blend * after
        level = session.effort * rng.lognormal(0.0, 0.2)
        envelope += level * bump(t, onset, dur)[:, None] * synergy[None, :]
    add_burst(envelope, t, total, rng)
    return render(opts, world, session, envelope, rng)


@dataclass
class _Plan:
    texts: dict[int, list[str]]  # per session, its transcripts in order
    held_out: list[str]
    lm: list[str]


def plan_text(opts: SentenceOptions, split_of: dict[int, str]) -> _Plan:
    """Held-out words, every session's transcripts and the language-model text."""
    word_list = load_word_list()
    held = choose_held_out(word_list, opts.unseen_words, rng_for(opts.seed, _STREAM + 1, 0))
    grammar = Grammar(word_list, held)
    taken: set[str] = set()
    texts: dict[int, list[str]] = {}
    for s in sorted(split_of, key=lambda s: (split_of[s] != "train", s)):  # train first
        rng = rng_for(opts.seed, _STREAM + 1, 1, s)
        unseen = 0 if split_of[s] == "train" else int(round(opts.open_share * opts.sentences))
        kinds = ["unseen"] * unseen + ["seen"] * (opts.sentences - unseen)
        kinds = [kinds[int(i)] for i in rng.permutation(len(kinds))]
        texts[s] = [draw_unique(grammar, rng, kind, taken) for kind in kinds]
    held_out_text = {t for s, ts in texts.items() if split_of[s] != "train" for t in ts}
    lm = lm_lines(grammar, opts.lm_sentences, held_out_text, word_list.words, rng_for(opts.seed, 9))
    return _Plan(texts, held, lm)


def generate_sentences(
    out_dir: str | os.PathLike[str], options: SentenceOptions | None = None
) -> dict[str, Any]:
    """Write train/val/test sentence splits and ``lm_text.txt`` to ``out_dir``; return the
    summary (also written to ``out_dir/synth.json``). ``out_dir`` is replaced atomically."""
    opts = options or SentenceOptions()
    opts.validate()
    sig = opts.signal_options()
    out = Path(out_dir)
    check_out_dir(out, _OWN_ENTRIES)
    layout = split_sessions(sig)
    split_of = {s: name for name, ids in layout.items() for s in ids}
    plan = plan_text(opts, split_of)
    world = make_world(sig)
    sessions = [make_session(sig, world, s) for s in range(sig.sessions)]
    typical = letter_durations(opts.seed)
    held = set(plan.held_out)
    stats: dict[str, dict[str, Any]] = {
        name: {"dir": str(out / name), "sessions": ids, "utterances": 0, "seconds": 0.0,
               "with_unseen_words": 0}
        for name, ids in layout.items()
    }  # fmt: skip
    total = opts.sentences * sig.sessions
    with atomic_dir(out) as tmp, progress_bar(total=total, desc="synth", unit="utt") as bar:
        for s, session in enumerate(sessions):
            split = split_of[s]
            folder = tmp / split / f"session{s:02d}"
            folder.mkdir(parents=True)
            first = 0
            if opts.fmt == "gaddy":  # a leading silence entry, as in real Gaddy sessions
                rng = rng_for(opts.seed, _STREAM + 2, s, 10**6)
                rest = sentence_utterance(sig, world, session, typical, "", rng)
                write_gaddy(folder, 0, rest, "", sentence_index=-1)
                first = 1
            for u, text in enumerate(plan.texts[s]):
                rng = rng_for(opts.seed, _STREAM + 2, s, u)
                emg = sentence_utterance(sig, world, session, typical, text, rng)
                write_utterance(folder, opts.fmt, s, u, first, emg, text, opts.sampling_rate)
                entry = stats[split]
                entry["utterances"] += 1
                entry["seconds"] += emg.shape[0] / opts.sampling_rate
                entry["with_unseen_words"] += any(w in held for w in text.split())
                bar.update()
        (tmp / LM_TEXT).write_text("\n".join(plan.lm) + "\n")
        for entry in stats.values():
            entry["seconds"] = round(entry["seconds"], 3)
        summary = {
            "out_dir": str(out),
            "task": "sentences",
            "options": asdict(opts),
            "lm_text": str(out / LM_TEXT),
            "word_list_size": len(load_word_list().words),
            "held_out_words": plan.held_out,
            "letter_classes": list(LETTER_CLASSES),
            "letter_durations": [round(float(d), 4) for d in typical],
            "splits": stats,
            "sessions": {str(s): sessions[s].describe() for s in range(sig.sessions)},
        }
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["LETTER_CLASSES", "SentenceOptions", "generate_sentences", "gesture_classes"]
