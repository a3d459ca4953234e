"""``ssr preprocess``: raw EMG splits -> validated, filtered, normalised spectral features on disk.

Every split is read and checked before anything is written; the processed data set then
appears atomically at ``data.processed_dir`` (see :mod:`ssr.data.processed`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

import ssr
from ssr.config import Config
from ssr.data.features import PREPROCESSING_KEYS, FeatureExtractor
from ssr.data.fingerprint import fingerprint_splits
from ssr.data.formats import Utterance, read_dir
from ssr.data.processed import SPLITS, SplitArrays, write_processed
from ssr.errors import DataError
from ssr.storage import is_s3, localize, publish

__all__ = [
    "FeatureExtractor",
    "Utterance",
    "check_labels",
    "load_split",
    "normalization_stats",
    "run_preprocess",
]

log = logging.getLogger(__name__)


def load_split(
    directory: str | os.PathLike[str], cfg: Config, fmt: str = "auto"
) -> list[Utterance]:
    """Read and validate every utterance of one split directory.

    Raises :class:`DataError` naming the file for an unreadable or truncated file, a missing
    label, a sampling rate or channel count other than the config's, NaN/inf samples, an
    utterance shorter than one analysis window, and for a split with no utterances.
    """
    directory = Path(directory)
    utterances = read_dir(directory, fmt, progress=f"read {directory.name}")
    if not utterances:
        raise DataError(f"{directory}: empty split (no utterances)")
    channels = cfg.model.num_channels
    rate = float(cfg.data.sampling_rate)
    window = cfg.data.window_size
    for utt in utterances:
        emg = utt.emg
        if emg.ndim != 2:
            raise DataError(f"{utt.path}: EMG must be 2-D (time, channels), got shape {emg.shape}")
        if not np.issubdtype(emg.dtype, np.number):
            raise DataError(f"{utt.path}: EMG has non-numeric dtype {emg.dtype}")
        if emg.shape[1] != channels:
            raise DataError(
                f"{utt.path}: {emg.shape[1]} channels but model.num_channels is {channels}"
            )
        if abs(utt.sampling_rate - rate) > 1e-6 * rate:
            raise DataError(
                f"{utt.path}: sampling rate {utt.sampling_rate:g} Hz but data.sampling_rate "
                f"is {rate:g} Hz"
            )
        if emg.shape[0] < window:
            raise DataError(
                f"{utt.path}: {emg.shape[0]} samples, shorter than one window "
                f"(data.window_size={window})"
            )
        if not np.all(np.isfinite(emg)):
            bad = int(np.count_nonzero(~np.isfinite(emg)))
            raise DataError(f"{utt.path}: {bad} NaN or infinite sample(s)")
    return utterances


def check_labels(train: list[Utterance], others: dict[str, list[Utterance]]) -> list[str]:
    """Sorted training labels; a val/test label never seen in training is a :class:`DataError`."""
    labels = sorted({u.label for u in train})
    known = set(labels)
    for name, utterances in others.items():
        for utt in utterances:
            if utt.label not in known:
                raise DataError(
                    f"{utt.path}: label {utt.label!r} of the {name} split never occurs in the "
                    f"training split"
                )
    return labels


def normalization_stats(filtered: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over all samples of filtered training EMG."""
    count = sum(x.shape[0] for x in filtered)
    total = sum(x.sum(axis=0, dtype=np.float64) for x in filtered)
    mean = total / count
    sq = sum(np.square(x - mean, dtype=np.float64).sum(axis=0) for x in filtered)
    std = np.sqrt(sq / count)
    return mean, std


def _featurise(
    extractor: FeatureExtractor,
    utterances: list[Utterance],
    label_ids: dict[str, int],
    name: str,
    filtered: list[np.ndarray] | None = None,
) -> SplitArrays:
    feats = []
    index = np.zeros((len(utterances), 3), dtype=np.int64)
    offset = 0
    for i, utt in enumerate(tqdm(utterances, desc=f"features {name}", unit="utt", leave=False)):
        x = filtered[i] if filtered is not None else extractor.filter(utt.emg)
        f = extractor.features_from_filtered(x)
        feats.append(f)
        index[i] = (offset, f.shape[0], label_ids[utt.label])
        offset += f.shape[0]
    features = np.concatenate(feats, axis=0)
    return SplitArrays(features, index, [u.path for u in utterances])


def run_preprocess(cfg: Config) -> Path:
    """Preprocess the configured train/val/test splits into ``data.processed_dir``; return it.

    Split folders and ``processed_dir`` may be ``s3://`` URIs: inputs are mirrored into
    ``storage.cache_dir`` first, and the finished data set is uploaded with its manifest last.
    """
    dirs = {"train": cfg.data.train_dir, "val": cfg.data.val_dir, "test": cfg.data.test_dir}
    local = {
        name: str(localize(uri, cfg.storage.cache_dir, cfg.storage)) for name, uri in dirs.items()
    }
    raw = {name: load_split(local[name], cfg, cfg.data.format) for name in SPLITS}
    labels = check_labels(raw["train"], {"val": raw["val"], "test": raw["test"]})
    label_ids = {label: i for i, label in enumerate(labels)}

    channels = cfg.model.num_channels
    conditioner = FeatureExtractor.from_config(cfg, np.zeros(channels), np.ones(channels))
    train_filtered = [
        conditioner.filter(u.emg)
        for u in tqdm(raw["train"], desc="filter train", unit="utt", leave=False)
    ]
    mean, std = normalization_stats(train_filtered)
    flat = np.flatnonzero(std <= 1e-12 * max(1.0, float(np.abs(mean).max())))
    if flat.size:
        raise DataError(
            f"{dirs['train']}: channel(s) {flat.tolist()} are constant after filtering in the "
            f"training split; cannot normalise"
        )
    extractor = FeatureExtractor.from_config(cfg, mean, std)

    splits = {"train": _featurise(extractor, raw["train"], label_ids, "train", train_filtered)}
    del train_filtered
    for name in ("val", "test"):
        splits[name] = _featurise(extractor, raw[name], label_ids, name)

    data = cfg.data.model_dump()
    manifest = extractor.to_manifest()
    manifest.update(
        {
            "labels": labels,
            "preprocessing": {k: data[k] for k in PREPROCESSING_KEYS} | {"format": cfg.data.format},
            "fingerprint": fingerprint_splits(raw, local),
            "created_by": f"ssr {ssr.__version__}",
            "sources": {name: str(dirs[name]) for name in SPLITS},
        }
    )
    target = cfg.data.processed_dir
    if is_s3(target):
        staging = Path(cfg.storage.cache_dir) / "processed-upload" / Path(target[5:]).name
        out = write_processed(staging, manifest, splits)
        publish(out, target, cfg.storage)
    else:
        out = write_processed(target, manifest, splits)
    log.info(
        "preprocessed %s utterances into %s (fingerprint %s)",
        ", ".join(f"{n}={len(raw[n])}" for n in SPLITS),
        out,
        manifest["fingerprint"][:12],
    )
    return out
