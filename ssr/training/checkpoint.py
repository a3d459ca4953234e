"""The single place that reads and writes checkpoint files.

Checkpoints are ``torch.save`` files of plain containers (dicts, lists, numbers, strings,
tensors) and load only with ``weights_only=True``: a file that needs arbitrary unpickling is
refused, never executed.

``directory`` and ``path`` may be local or ``s3://`` URIs (see :mod:`ssr.storage`). The resume
checkpoint of a run is found through the ``latest.json`` pointer and verified (size, sha256).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ssr.config import Config, StorageConfig, config_from_dict, flatten, stored_model_section
from ssr.data.fingerprint import FEATURE_FIELDS, feature_hash
from ssr.errors import CheckpointError, ConfigError, StorageError
from ssr.fsutil import atomic_path
from ssr.model import build_model
from ssr.storage import is_s3, join, load_latest, read_bytes, write_bytes
from ssr.storage.s3 import ObjectNotFoundError

LAST = "last.pth"
BEST = "best_model.pth"


def epoch_name(epoch: int) -> str:
    """File name of the periodic checkpoint of ``epoch``."""
    return f"checkpoint_epoch_{epoch}.pth"


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """``state`` serialised with ``torch.save``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(
    state: dict[str, Any],
    directory: str,
    name: str,
    storage: StorageConfig | None = None,
    data: bytes | None = None,
) -> str:
    """Write ``state`` (or its bytes ``data``) to ``directory/name`` completely; return it.

    Local: temp file, then rename. S3: one PutObject or a multipart upload (see ssr.storage).
    """
    if is_s3(directory):
        uri = join(directory, name)
        write_bytes(uri, data if data is not None else checkpoint_bytes(state), storage)
        return uri
    target = Path(directory) / name
    try:
        with atomic_path(target) as tmp:
            torch.save(state, tmp)
    except OSError as exc:
        raise CheckpointError(f"{target}: cannot write checkpoint: {exc}") from None
    return str(target)


def load_checkpoint(path: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    """Load a checkpoint (local path or ``s3://`` URI) onto the CPU, safely (``weights_only``).

    Raises CheckpointError naming ``path`` when it is missing, truncated, corrupt, not a
    checkpoint dict, or would need unsafe unpickling.
    """
    if is_s3(path):
        try:
            return load_checkpoint_bytes(read_bytes(path, storage), path)
        except ObjectNotFoundError:
            raise CheckpointError(f"{path}: checkpoint not found") from None
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return _torch_load(p, path)


def load_checkpoint_bytes(data: bytes, source: str) -> dict[str, Any]:
    """Load checkpoint bytes (``weights_only=True``); errors name ``source``."""
    return _torch_load(io.BytesIO(data), source)


# How a ``torch.save`` file starts: a zip archive (the format since torch 1.6), or the legacy
# format's pickled magic number (protocol 2, a 10-byte long).
TORCH_SAVE_HEADS = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def _head(f: Path | io.BytesIO, path: str) -> bytes:
    if isinstance(f, io.BytesIO):
        return f.getvalue()[:4]
    try:
        with f.open("rb") as stream:
            return stream.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None


def _torch_load(f: Path | io.BytesIO, path: str) -> dict[str, Any]:
    head = _head(f, path)
    if not head.startswith(TORCH_SAVE_HEADS):
        what = "an empty file" if not head else "not a file written by torch.save"
        raise CheckpointError(f"{path}: not an ssr checkpoint ({what})")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling failed"
        raise CheckpointError(
            f"{path}: refused, the file needs unsafe unpickling (only weights and plain "
            f"containers are loaded): {first}"
        ) from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        IndexError,
        KeyError,  # a damaged legacy-format file: a pickle memo lookup that fails
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: not an ssr checkpoint (top level is {type(state).__name__})"
        )
    return state


def find_resume(
    directory: str, storage: StorageConfig | None = None
) -> tuple[dict[str, Any], str] | None:
    """The newest complete resume checkpoint of ``directory`` (``--resume auto``) and its URI.

    Found through ``latest.json`` and verified against it (size, sha256); None when the
    directory has no pointer yet (a fresh start).
    """
    try:
        found = load_latest(directory, storage)
    except StorageError as exc:
        raise CheckpointError(f"{directory}: cannot read the resume pointer: {exc}") from None
    if found is None:
        return None
    pointer, data = found
    source = join(directory, pointer.checkpoint)
    return load_checkpoint_bytes(data, source), source


def feature_state(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores of the features it was trained on: ``feature_hash`` and the
    settings behind it (``features``), from the processed data set's manifest."""
    return {
        "feature_hash": feature_hash(manifest),
        "features": {key: manifest.get(key) for key in FEATURE_FIELDS},
    }


def check_features(state: dict[str, Any], manifest: dict[str, Any], source: str, data: str) -> bool:
    """Refuse a checkpoint (``source``) trained on other features than data set ``data``.

    Compares the checkpoint's ``feature_hash`` with the hash of ``manifest``'s feature
    settings (filters, window, hop, bands, channels, normalisation); the error names the
    settings that differ. Returns False (and checks nothing) for a checkpoint written before
    feature hashes existed; True when the features match.
    """
    stored = state.get("feature_hash")
    if stored is None:
        return False
    current = feature_hash(manifest)
    if stored == current:
        return True
    before = state.get("features")
    changed: list[str] = []
    if isinstance(before, dict):
        old = flatten({k: before.get(k) for k in FEATURE_FIELDS})
        new = flatten({k: manifest.get(k) for k in FEATURE_FIELDS})
        changed = [
            f"{k}: {old.get(k)!r:.40} -> {new.get(k)!r:.40}"
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
    detail = f" ({'; '.join(changed[:4])}{'; ...' if len(changed) > 4 else ''})" if changed else ""
    raise CheckpointError(
        f"{source}: trained on features {str(stored)[:12]}, but {data} has features "
        f"{current[:12]}{detail}; preprocess the data with the model's settings or train anew"
    )


def checkpoint_labels(state: dict[str, Any], source: str) -> list[str]:
    """The checkpoint's ``labels``: a list of at least 2 distinct strings, else CheckpointError."""
    labels = state.get("labels")
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(label, str) and label for label in labels)
    ):
        raise CheckpointError(
            f"{source}: 'labels' must be a non-empty list of strings, got {type(labels).__name__}"
        )
    if len(set(labels)) != len(labels):
        raise CheckpointError(f"{source}: 'labels' holds duplicates")
    if len(labels) < 2:
        raise CheckpointError(
            f"{source}: 'labels' holds one label ({labels[0]!r}); a classifier needs at least 2, "
            "so this is not a usable ssr checkpoint"
        )
    return list(labels)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def describe_mismatch(expected: dict[str, Any], given: dict[str, Any], limit: int = 3) -> str:
    """A one-line summary of how state dict ``given`` differs from ``expected``: counts of
    missing and unexpected keys and of shape mismatches, with the first ``limit`` of each."""

    def first(items: list[str]) -> str:
        more = f", ... (+{len(items) - limit})" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{k} {list(_shape(given[k]))} vs {list(_shape(expected[k]))}"
        for k in sorted(set(expected) & set(given))
        if _shape(given[k]) != _shape(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model: {first(shapes)})")
    return "; ".join(parts)


def load_weights(model: torch.nn.Module, weights: Any, source: str) -> None:
    """Load ``weights`` into ``model`` strictly; a mismatch is one summarising CheckpointError."""
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(
            f"{source}: 'model' is not a state dict (a mapping of names to tensors)"
        )
    expected = model.state_dict()
    problem = describe_mismatch(expected, weights)
    if problem:
        raise CheckpointError(f"{source}: weights do not fit the stored config: {problem}")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "load failed"
        raise CheckpointError(f"{source}: weights do not fit the stored config: {first}") from None


def stored_config(state: dict[str, Any], source: str) -> Config:
    """The validated training config stored in a checkpoint (CheckpointError if unusable)."""
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{source}: 'config' is missing or not a mapping")
    raw = dict(state["config"])
    if isinstance(raw.get("model"), dict):  # written before a model key existed: as it was
        raw["model"] = stored_model_section(raw["model"])
    try:
        return config_from_dict(raw, f"{source} (stored config)")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def restore_model(state: dict[str, Any], source: str) -> tuple[torch.nn.Module, Config, list[str]]:
    """Rebuild the model of a training checkpoint from its stored config and weights.

    Returns ``(model, config, labels)``; raises CheckpointError naming ``source`` when the file is
    not an ssr training checkpoint or its weights do not fit its config.
    """

    for key in ("model", "config", "labels"):
        if key not in state:
            raise CheckpointError(f"{source}: not an ssr training checkpoint (no {key!r})")
    cfg = stored_config(state, source)
    labels = checkpoint_labels(state, source)
    model = build_model(cfg.model, len(labels))
    load_weights(model, state["model"], source)
    return model, cfg, labels


RESUME_KEYS = ("model", "optimizer", "scheduler", "early_stopping", "epoch", "rng", "labels")


def check_resumable(
    state: dict[str, Any], source: str, labels: list[str], model: dict[str, Any]
) -> None:
    """Refuse to continue a checkpoint that is not a training checkpoint, or was trained on
    other labels or another model architecture (``model``: the current ``cfg.model`` dump;
    dropout may change)."""
    missing = [k for k in (*RESUME_KEYS, "config") if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not a resumable ssr checkpoint (missing {missing})")
    if checkpoint_labels(state, source) != labels:
        raise CheckpointError(
            f"{source}: labels {list(state['labels'])} differ from the data set's {labels}"
        )
    config = state["config"]
    stored = config.get("model") if isinstance(config, dict) else None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{source}: stored config has no 'model' section")
    stored = stored_model_section(stored)
    diff = sorted(k for k in model if k != "dropout" and stored.get(k) != model[k])
    if diff:
        changes = ", ".join(f"model.{k}: {stored.get(k)} -> {model[k]}" for k in diff)
        raise CheckpointError(f"{source}: model config differs from the checkpoint ({changes})")
