"""The single place that reads and writes checkpoint files.

Checkpoints are ``torch.save`` files of plain containers (dicts, lists, numbers, strings,
tensors) and load only with ``weights_only=True``: a file that needs arbitrary unpickling is
refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ssr.errors import CheckpointError
from ssr.fsutil import atomic_path

LAST = "last.pth"
BEST = "best_model.pth"


def epoch_name(epoch: int) -> str:
    """File name of the periodic checkpoint of ``epoch``."""
    return f"checkpoint_epoch_{epoch}.pth"


def save_checkpoint(state: dict[str, Any], directory: str, name: str) -> str:
    """Write ``state`` to ``directory/name`` atomically (temp file, then rename); return it."""
    target = Path(directory) / name
    try:
        with atomic_path(target) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise CheckpointError(f"{target}: cannot write checkpoint: {exc}") from None
    return str(target)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, safely (``weights_only=True``).

    Raises CheckpointError naming ``path`` when it is missing, truncated, corrupt, not a
    checkpoint dict, or would need unsafe unpickling.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        raise CheckpointError(
            f"{path}: refused, the file needs unsafe unpickling (only weights and plain "
            f"containers are loaded): {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: not an ssr checkpoint (top level is {type(state).__name__})"
        )
    return state


def find_resume(directory: str) -> str | None:
    """``directory/last.pth`` if it exists (``--resume auto``), else None."""
    candidate = os.path.join(directory, LAST)
    return candidate if os.path.isfile(candidate) else None
