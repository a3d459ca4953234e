"""Synthetic silent-speech sEMG data sets: train/val/test splits written to a directory.

The signal model (muscles, gestures and words, sessions, artefacts) is in
:mod:`ssr.data.synth_model`. Validation and test use sessions never seen in training, so a
model must generalise across electrode placements, as on real data.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ssr.data.formats import write_gaddy, write_native
from ssr.data.synth_model import (
    SynthOptions,
    make_session,
    make_world,
    rng_for,
    utterance,
    vocabulary,
)
from ssr.errors import DataError
from ssr.fsutil import atomic_dir
from ssr.progress import progress_bar

SUMMARY = "synth.json"
_OWN_ENTRIES = {"train", "val", "test", "processed", SUMMARY}  # processed: derived


def sample_utterances(
    options: SynthOptions, count: int, session: int = 0
) -> list[tuple[str, np.ndarray]]:
    """``count`` utterances ``(word, emg (time, channels) float32)`` of one session, in memory."""
    options.validate()
    world = make_world(options)
    sess = make_session(options, world, session)
    words = vocabulary(options.vocab)
    out = []
    for u in range(count):
        word = words[u % len(words)]
        out.append((word, utterance(options, world, sess, session, u, word)))
    return out


def split_sessions(opts: SynthOptions) -> dict[str, list[int]]:
    first_test = opts.sessions - opts.num_test_sessions
    return {
        "train": list(range(opts.train_sessions)),
        "val": list(range(opts.train_sessions, first_test)),
        "test": list(range(first_test, opts.sessions)),
    }


def check_out_dir(out: Path, own: frozenset[str] | set[str] = _OWN_ENTRIES) -> None:
    """Refuse an output folder that is a file, or holds anything but a previous synth output
    (``own``: the names a synth output consists of)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in own)
        if foreign:
            raise DataError(
                f"{out}: not empty and not a previous synth output (has {foreign[:3]}); "
                f"choose another --out"
            )


def write_utterance(
    folder: Path,
    fmt: str,
    session: int,
    index: int,
    first: int,
    emg: np.ndarray,
    label: str,
    sampling_rate: float,
) -> None:
    """Write utterance ``index`` of ``session`` into ``folder``: ``{index:05d}.npz`` (native)
    or Gaddy entry ``first + index`` (``first`` 1 after a leading silence entry)."""
    if fmt == "native":
        write_native(folder / f"{index:05d}.npz", emg, label, sampling_rate)
        return
    info: dict[str, Any] = {"session": session}
    if sampling_rate != 1000.0:
        info["sampling_rate"] = sampling_rate
    write_gaddy(folder, first + index, emg, label, sentence_index=index, extra_info=info)


def generate(
    out_dir: str | os.PathLike[str], options: SynthOptions | None = None
) -> dict[str, Any]:
    """Write train/val/test splits of synthetic sEMG to ``out_dir``; return a summary.

    The output replaces ``out_dir`` atomically (allowed only when it is empty or a previous
    synth output). The summary is also written to ``out_dir/synth.json``.
    """
    opts = options or SynthOptions()
    opts.validate()
    out = Path(out_dir)
    check_out_dir(out)
    world = make_world(opts)
    sessions = [make_session(opts, world, s) for s in range(opts.sessions)]
    split_of = {s: name for name, ids in split_sessions(opts).items() for s in ids}
    words = vocabulary(opts.vocab)

    plan: dict[int, list[str]] = {s: [] for s in range(opts.sessions)}
    for word in words:
        for j in range(opts.per_word):
            plan[j % opts.sessions].append(word)
    order_rng = rng_for(opts.seed, 3)
    for s in plan:
        plan[s] = [plan[s][i] for i in order_rng.permutation(len(plan[s]))]

    stats: dict[str, dict[str, Any]] = {
        name: {"dir": str(out / name), "sessions": ids, "utterances": 0, "seconds": 0.0}
        for name, ids in split_sessions(opts).items()
    }
    total = sum(len(v) for v in plan.values())
    with atomic_dir(out) as tmp, progress_bar(total=total, desc="synth", unit="utt") as bar:
        for s, session in enumerate(sessions):
            split = split_of[s]
            folder = tmp / split / f"session{s:02d}"
            folder.mkdir(parents=True)
            first = 0
            if opts.fmt == "gaddy":  # a leading silence entry, as in real Gaddy sessions
                rest = utterance(opts, world, session, s, 10**6, None)
                write_gaddy(folder, 0, rest, "", sentence_index=-1)
                first = 1
            for u, word in enumerate(plan[s]):
                emg = utterance(opts, world, session, s, u, word)
                write_utterance(folder, opts.fmt, s, u, first, emg, word, opts.sampling_rate)
                stats[split]["utterances"] += 1
                stats[split]["seconds"] += emg.shape[0] / opts.sampling_rate
                bar.update()
        summary = {
            "out_dir": str(out),
            "options": asdict(opts),
            "vocabulary": words,
            "words": {w: world.words[w] for w in words},
            "splits": stats,
            "sessions": {str(s): sessions[s].describe() for s in range(opts.sessions)},
        }
        for entry in stats.values():
            entry["seconds"] = round(entry["seconds"], 3)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["SynthOptions", "generate", "sample_utterances", "vocabulary"]
