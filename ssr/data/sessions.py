"""Recording sessions of a split: an utterance's session is the folder its file lies in.

Both raw layouts keep one folder per session (``split/<session>/<file>``), and the processed
data set records each utterance's source path (``{split}_ids.json``), so the session needs no
extra field. A split whose files lie directly in the split folder is one session, named after
that folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath

import numpy as np

# MLflow accepts alphanumerics, "_", "-", ".", " ", "/" and ":" (not on Windows) in metric
# names; "/" would add a level and "." or ".." alone is a path step it refuses. W&B takes these.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")
_MAX_KEY = 100  # MLflow's limit is 250 characters for the whole name


def session_of(utterance_id: str) -> str:
    """The session (parent folder name) of an utterance's source path."""
    return PurePath(utterance_id).parent.name or "."


def session_groups(ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``{session: indices of its utterances}``, sessions sorted by name."""
    names = [session_of(i) for i in ids]
    return {s: np.flatnonzero(np.array([n == s for n in names])) for s in sorted(set(names))}


def metric_keys(names: Sequence[str]) -> dict[str, str]:
    """``{session: key}``: each name made safe as one segment of a metric name (MLflow, W&B;
    a run of other characters becomes one ``_``), and distinct."""
    keys: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        key = _UNSAFE.sub("_", name)[:_MAX_KEY] or "_"
        if set(key) == {"."}:  # "." and ".." are path steps
            key = key.replace(".", "_")
        base, n = key, 2
        while key in used:
            key, n = f"{base}_{n}", n + 1
        used.add(key)
        keys[name] = key
    return keys
