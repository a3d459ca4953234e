"""Recording sessions of a split: an utterance's session is the folder its file lies in.

Both raw layouts keep one folder per session (``split/<session>/<file>``), and the processed
data set records each utterance's source path (``{split}_ids.json``), so the session needs no
extra field. A split whose files lie directly in the split folder is one session, named after
that folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

import numpy as np


def session_of(utterance_id: str) -> str:
    """The session (parent folder name) of an utterance's source path."""
    return PurePath(utterance_id).parent.name or "."


def session_groups(ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``{session: indices of its utterances}``, sessions sorted by name."""
    names = [session_of(i) for i in ids]
    return {s: np.flatnonzero(np.array([n == s for n in names])) for s in sorted(set(names))}
