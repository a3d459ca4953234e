"""Content fingerprint of raw EMG splits: same recordings, same hash; any changed sample changes it.

Each utterance is hashed on its own: its path relative to the split root, label, sampling rate
and samples (dtype, shape, bytes). A split's hash covers its name, its utterance count and the
utterance hashes in relative-path order, so the order files are read in does not matter, moving
the data elsewhere keeps the fingerprint, and renaming or editing a file changes it. Utterances
can be added one at a time (:class:`Fingerprint`), so a split never has to be in memory at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssr.data.formats import Utterance


def _relative(path: str, root: str | os.PathLike[str]) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


class Fingerprint:
    """sha256 over splits added utterance by utterance; splits keep the order first seen."""

    def __init__(self) -> None:
        self._splits: dict[str, list[tuple[str, bytes]]] = {}
        # samples-only digest -> [(split, path)]: the same recording under any name or label
        self._content: dict[bytes, list[tuple[str, str]]] = {}

    def split(self, name: str) -> None:
        """Declare split ``name`` (so an empty split is part of the fingerprint too)."""
        self._splits.setdefault(name, [])

    def add(self, split: str, utt: Utterance, root: str | os.PathLike[str]) -> None:
        """Hash one utterance of ``split`` whose directory is ``root``."""
        emg = np.ascontiguousarray(utt.emg)
        relative = _relative(utt.path, root)
        header = f"{relative}\0{utt.label}\0{utt.sampling_rate!r}\0{emg.dtype.str}\0{emg.shape}\0"
        digest = hashlib.sha256(header.encode())
        samples = emg.reshape(-1).view(np.uint8).data  # the bytes, without a copy
        digest.update(samples)
        self._splits.setdefault(split, []).append((relative, digest.digest()))
        content = hashlib.sha256(f"{emg.dtype.str}\0{emg.shape}\0".encode())
        content.update(samples)
        self._content.setdefault(content.digest(), []).append((split, utt.path))

    def repeated(self) -> list[list[tuple[str, str]]]:
        """Groups of utterances with identical samples, each ``[(split, path), ...]`` (2+)."""
        return [places for places in self._content.values() if len(places) > 1]

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for name, items in self._splits.items():
            total.update(f"split\0{name}\0{len(items)}\0".encode())
            for _, digest in sorted(items):
                total.update(digest)
        return total.hexdigest()


def fingerprint_splits(
    splits: Mapping[str, Sequence[Utterance]], roots: Mapping[str, str | os.PathLike[str]]
) -> str:
    """sha256 hex digest over the contents of every split (``roots`` maps split -> directory)."""
    fingerprint = Fingerprint()
    for name, utterances in splits.items():
        fingerprint.split(name)
        for utt in utterances:
            fingerprint.add(name, utt, roots[name])
    return fingerprint.hexdigest()


# The manifest fields that decide what features a raw recording becomes.
FEATURE_FIELDS = ("preprocessing", "input_size", "num_channels", "normalization")


def feature_hash(manifest: Mapping[str, Any]) -> str:
    """sha256 over the feature settings of a processed data set's manifest: filter, window and
    hop parameters, bands, channels and the normalisation statistics (:data:`FEATURE_FIELDS`).

    The data fingerprint says which recordings; this says how they became features. A model
    only fits features of the same hash.
    """
    settings = {key: manifest.get(key) for key in FEATURE_FIELDS}
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()
