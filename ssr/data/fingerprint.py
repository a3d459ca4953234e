"""Content fingerprint of raw EMG splits: same recordings, same hash; any changed sample changes it.

The hash covers, per split in the given order and per utterance in sorted path order, the path
relative to the split root, the label, the sampling rate, and the samples (dtype, shape, bytes),
so moving the data elsewhere keeps the fingerprint while renaming or editing a file changes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ssr.data.formats import Utterance


def _relative(path: str, root: str | os.PathLike[str]) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def fingerprint_splits(
    splits: Mapping[str, Sequence[Utterance]], roots: Mapping[str, str | os.PathLike[str]]
) -> str:
    """sha256 hex digest over the contents of every split (``roots`` maps split -> directory)."""
    digest = hashlib.sha256()
    for name, utterances in splits.items():
        digest.update(f"split\0{name}\0{len(utterances)}\0".encode())
        for utt in sorted(utterances, key=lambda u: u.path):
            emg = np.ascontiguousarray(utt.emg)
            header = (
                f"{_relative(utt.path, roots[name])}\0{utt.label}\0{utt.sampling_rate!r}\0"
                f"{emg.dtype.str}\0{emg.shape}\0"
            )
            digest.update(header.encode())
            digest.update(emg.tobytes())
    return digest.hexdigest()
