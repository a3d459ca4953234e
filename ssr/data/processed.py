"""The preprocessed, model-ready data set on disk: the contract between preprocessing and training.

Layout of ``processed_dir``::

    manifest.json            label map, shapes, normalisation stats, parameters, fingerprint
    {split}_features.npy     float32 (total_frames, channels, bins), utterances concatenated
    {split}_index.npy        int64 (utterances, 3): frame offset, frame count, label id
    {split}_ids.json         source file of each utterance (for error messages and plots)
    {split}_text.json        task sentences: the normalised transcript of each utterance
    lm_text.txt              task sentences: the normalised ``decoding.lm_text`` (if given)

For ``task: sentences`` the manifest's ``task`` is ``"sentences"``, its ``labels`` are the
model's output units (the CTC blank first, :func:`ssr.sentences.units.output_labels`) and the
index's label column is 0; the transcripts are in ``{split}_text.json``.

The ``.npy`` arrays are contiguous and opened with ``mmap_mode="r"``, so training reads them
without loading everything into memory and without re-filtering.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssr.data.fingerprint import feature_hash
from ssr.errors import DataError
from ssr.fsutil import atomic_dir

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
LM_TEXT = "lm_text.txt"  # task sentences: extra language-model text, one sentence per line


@dataclass
class SplitArrays:
    """One split in memory, as written by preprocessing."""

    features: np.ndarray  # float32 (total_frames, channels, bins)
    index: np.ndarray  # int64 (utterances, 3): offset, length, label id
    ids: list[str]
    texts: list[str] | None = None  # task sentences: one transcript per utterance

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise ValueError(
                f"features must be 3-D (frames, channels, bins), got {self.features.shape}"
            )
        if self.index.ndim != 2 or self.index.shape[1] != 3:
            raise ValueError(f"index must be (utterances, 3), got {self.index.shape}")
        if len(self.ids) != len(self.index):
            raise ValueError("ids and index disagree in length")
        if self.texts is not None and len(self.texts) != len(self.ids):
            raise ValueError("texts and ids disagree in length")


@dataclass
class SplitStream:
    """One split produced utterance by utterance, so it never has to be in memory at once.

    ``lengths[i]`` frames of utterance ``i`` with label id ``labels[i]`` from ``ids[i]``;
    ``features`` yields the (frames, channels, bins) arrays in the same order.
    """

    lengths: Sequence[int]
    labels: Sequence[int]
    ids: list[str]
    shape: tuple[int, int]  # (channels, bins)
    features: Iterable[np.ndarray]
    texts: list[str] | None = None  # task sentences: one transcript per utterance

    @property
    def index(self) -> np.ndarray:
        lengths = np.asarray(self.lengths, dtype=np.int64)
        offsets = np.cumsum(lengths) - lengths
        return np.stack([offsets, lengths, np.asarray(self.labels, np.int64)], axis=1)


def _split_entry(arr: SplitArrays | SplitStream) -> dict[str, Any]:
    if isinstance(arr, SplitStream):
        frames, shape = int(sum(arr.lengths)), list(arr.shape)
    else:
        frames, shape = int(arr.features.shape[0]), list(arr.features.shape[1:])
    return {"utterances": len(arr.ids), "frames": frames, "shape": [int(s) for s in shape]}


def _write_stream(path: Path, arr: SplitStream) -> None:
    """Fill a memory-mapped ``.npy`` utterance by utterance, checking every shape."""
    total = int(sum(arr.lengths))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, *arr.shape))
    offset, count = 0, 0
    for i, feats in enumerate(arr.features):
        expected = (int(arr.lengths[i]), *arr.shape) if i < len(arr.lengths) else None
        if feats.shape != expected:
            raise DataError(
                f"{arr.ids[i] if i < len(arr.ids) else path}: features {feats.shape}, "
                f"expected {expected}"
            )
        out[offset : offset + feats.shape[0]] = feats
        offset += feats.shape[0]
        count += 1
    if count != len(arr.lengths):
        raise DataError(f"{path.name}: {count} utterances produced, {len(arr.lengths)} expected")
    out.flush()
    del out


def write_processed(
    out_dir: str | os.PathLike[str],
    manifest: dict[str, Any],
    splits: Mapping[str, SplitArrays | SplitStream],
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write a processed data set atomically: everything goes to a temp dir renamed at the end.
    ``extra_files`` are text files written beside the arrays (e.g. :data:`LM_TEXT`).

    A :class:`SplitStream` is written straight into a memory-mapped file, one utterance at a time.
    """
    out = Path(out_dir)
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["feature_hash"] = feature_hash(manifest)
    manifest["splits"] = {name: _split_entry(arr) for name, arr in splits.items()}
    with atomic_dir(out) as tmp:
        for name, arr in splits.items():
            if isinstance(arr, SplitStream):
                _write_stream(tmp / f"{name}_features.npy", arr)
            else:
                features = np.ascontiguousarray(arr.features, np.float32)
                np.save(tmp / f"{name}_features.npy", features)
            np.save(tmp / f"{name}_index.npy", np.ascontiguousarray(arr.index, np.int64))
            (tmp / f"{name}_ids.json").write_text(json.dumps(arr.ids))
            if arr.texts is not None:
                (tmp / f"{name}_text.json").write_text(json.dumps(arr.texts))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def _labels_problem(labels: Any) -> str | None:
    """What is wrong with a manifest's ``labels``, or None."""
    if not isinstance(labels, list) or not labels:
        return "'labels' must be a non-empty list"
    if not all(isinstance(label, str) and label for label in labels):
        return "'labels' must hold non-empty strings"
    if len(set(labels)) != len(labels):
        return "'labels' holds duplicates"
    return None


def _split_problem(name: str, entry: Any) -> str | None:
    """What is wrong with the manifest entry ``splits.<name>``, or None."""
    if not isinstance(entry, dict):
        return f"splits.{name} must be an object"
    for key in ("utterances", "frames"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"splits.{name}.{key} must be a non-negative integer"
    shape = entry.get("shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
    ):
        return f"splits.{name}.shape must be [channels, bins]"
    return None


def _manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a parsed manifest, or None."""
    if not isinstance(manifest, dict):
        return "must be a JSON object"
    if manifest.get("format_version") != FORMAT_VERSION:
        return f"unsupported format_version {manifest.get('format_version')!r}"
    problem = _labels_problem(manifest.get("labels"))
    if problem:
        return problem
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "'splits' must be a non-empty object"
    for name, entry in splits.items():
        problem = _split_problem(name, entry)
        if problem:
            return problem
    return _optional_fields_problem(manifest)


def _optional_fields_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the manifest's optional string and integer fields, or None."""
    for key in ("fingerprint", "feature_hash"):
        if key in manifest and not isinstance(manifest[key], str):
            return f"{key!r} must be a string"
    for key in ("num_channels", "input_size"):
        value = manifest.get(key)
        if key in manifest and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{key!r} must be an integer"
    return None


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a processed data set (DataError naming the field)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no manifest; run `ssr preprocess` first")
    try:
        manifest: dict[str, Any] = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: manifest is not valid JSON: {exc}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"{path}: {problem}")
    return manifest


class ProcessedSplit(Dataset):
    """A memory-mapped split; items are ``(features (frames, channels, bins), label id)``, or
    for ``task: sentences`` ``(features, unit ids of the transcript)``."""

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.manifest = read_manifest(self.root)
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.root}: split {split!r} not in processed data set")
        feat_path = self.root / f"{split}_features.npy"
        index_path = self.root / f"{split}_index.npy"
        ids_path = self.root / f"{split}_ids.json"
        try:
            self.features = np.load(feat_path, mmap_mode="r", allow_pickle=False)
            self.index = np.load(index_path, allow_pickle=False)
            ids = json.loads(ids_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{feat_path.parent}: cannot read split {split!r}: {exc}") from None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{ids_path}: must be a JSON list of strings")
        self.ids: list[str] = ids
        if len(self.index) == 0:
            raise DataError(f"{self.root}: split {split!r} is empty")
        self._check_arrays(feat_path, index_path)
        self.texts: list[str] = []
        self._targets: list[torch.Tensor] = []
        if self.task == "sentences":
            self._read_texts(self.root / f"{split}_text.json")

    @property
    def task(self) -> str:
        """``words`` or ``sentences`` (data sets from before tasks existed are words)."""
        return str(self.manifest.get("task", "words"))

    def _read_texts(self, path: Path) -> None:
        """Load the transcripts and their unit ids; each must be in the manifest's units."""
        try:
            texts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read the transcripts: {exc}") from None
        if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
            raise DataError(f"{path}: must be a JSON list of non-empty strings")
        if len(texts) != len(self.ids):
            raise DataError(f"{path}: {len(texts)} transcripts for {len(self.ids)} utterances")
        units = {u: i for i, u in enumerate(self.label_names) if i}
        for source, text in zip(self.ids, texts, strict=True):
            bad = sorted({c for c in text if c not in units})
            if bad:
                raise DataError(f"{path}: transcript of {source} holds units {bad} not in labels")
            self._targets.append(torch.tensor([units[c] for c in text], dtype=torch.long))
        self.texts = texts

    def _check_arrays(self, feat_path: Path, index_path: Path) -> None:
        """Refuse arrays that disagree with each other or with the manifest."""
        entry = self.manifest["splits"][self.split]
        if self.features.ndim != 3 or list(self.features.shape[1:]) != entry["shape"]:
            raise DataError(
                f"{feat_path}: shape {self.features.shape}, manifest says (frames, "
                f"{entry['shape'][0]}, {entry['shape'][1]})"
            )
        if self.features.dtype != np.float32:
            raise DataError(f"{feat_path}: dtype {self.features.dtype}, expected float32")
        index = self.index
        if index.ndim != 2 or index.shape[1] != 3 or index.dtype.kind not in "iu":
            raise DataError(f"{index_path}: must be integer (utterances, 3), got {index.shape}")
        if len(self.ids) != len(index):
            raise DataError(
                f"{self.root}: {self.split}_ids.json lists {len(self.ids)} utterances, "
                f"the index {len(index)}"
            )
        offsets, lengths, labels = index[:, 0], index[:, 1], index[:, 2]
        total = self.features.shape[0]
        bad = np.flatnonzero((offsets < 0) | (lengths < 1) | (offsets + lengths > total))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{index_path}: utterance {i} ({self.ids[i]}) spans frames "
                f"{int(offsets[i])}..{int(offsets[i] + lengths[i])}, outside the "
                f"{total} frames of {feat_path.name} ({bad.size} such utterance(s))"
            )
        classes = len(self.manifest["labels"])
        bad = np.flatnonzero((labels < 0) | (labels >= classes))
        if bad.size:
            raise DataError(
                f"{index_path}: label id {int(labels[bad[0]])} outside the {classes} labels "
                f"of the manifest ({bad.size} utterance(s))"
            )

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def labels(self) -> np.ndarray:
        labels: np.ndarray = self.index[:, 2]
        return labels

    @property
    def lengths(self) -> np.ndarray:
        lengths: np.ndarray = self.index[:, 1]
        return lengths

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        offset, length, label = (int(v) for v in self.index[i])
        x = torch.from_numpy(np.array(self.features[offset : offset + length], dtype=np.float32))
        if self._targets:
            return x, self._targets[i]
        return x, label


@dataclass
class Batch:
    """A padded batch: ``x`` (B, T, C, F), ``lengths`` (B,), ``labels`` (B,); for sentences
    also ``targets`` (B, S) unit ids padded with 0 and ``target_lengths`` (B,)."""

    x: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None
    target_lengths: torch.Tensor | None = None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        return Batch(
            fn(self.x),
            fn(self.lengths),
            fn(self.labels),
            None if self.targets is None else fn(self.targets),
            None if self.target_lengths is None else fn(self.target_lengths),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        return self._map(lambda t: t.pin_memory())

    def padding_mask(self) -> torch.Tensor:
        """Bool (B, T), True where a frame is padding."""
        t = self.x.shape[1]
        return torch.arange(t, device=self.x.device)[None, :] >= self.lengths[:, None]


def collate(items: list[tuple[torch.Tensor, int | torch.Tensor]]) -> Batch:
    """Pad utterances of different lengths to the longest in the batch (no truncation); unit
    id sequences (sentences) are padded with 0 into ``targets``."""
    lengths = torch.tensor([x.shape[0] for x, _ in items], dtype=torch.long)
    t_max = int(lengths.max())
    c, f = items[0][0].shape[1:]
    x = torch.zeros(len(items), t_max, c, f, dtype=torch.float32)
    for i, (feat, _) in enumerate(items):
        x[i, : feat.shape[0]] = feat
    sequences = [y for _, y in items if isinstance(y, torch.Tensor)]
    if not sequences:
        labels = torch.tensor([int(y) for _, y in items], dtype=torch.long)
        return Batch(x, lengths, labels)
    if len(sequences) != len(items):
        raise ValueError("a batch mixes word labels and transcripts")
    target_lengths = torch.tensor([len(y) for y in sequences], dtype=torch.long)
    targets = torch.zeros(len(items), int(target_lengths.max()), dtype=torch.long)
    for i, y in enumerate(sequences):
        targets[i, : len(y)] = y
    zeros = torch.zeros(len(items), dtype=torch.long)
    return Batch(x, lengths, zeros, targets, target_lengths)
