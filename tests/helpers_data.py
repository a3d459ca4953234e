"""Tiny processed data sets for tests: class-dependent random features a small model can learn."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ssr.data.processed import SplitArrays, write_processed

SPLIT_FRACTIONS = {"train": 1.0, "val": 0.5, "test": 0.5}


def _split(
    rng: np.random.Generator,
    prototypes: np.ndarray,
    per_class: int,
    frames: tuple[int, int],
    name: str,
) -> SplitArrays:
    n_classes, channels, bins = prototypes.shape
    feats, index, ids = [], [], []
    offset = 0
    for label in range(n_classes):
        for k in range(per_class):
            length = int(rng.integers(frames[0], frames[1] + 1))
            x = prototypes[label][None] + 0.8 * rng.standard_normal((length, channels, bins))
            feats.append(x.astype(np.float32))
            index.append((offset, length, label))
            ids.append(f"{name}/class{label}_{k:03d}.npz")
            offset += length
    order = rng.permutation(len(index))
    return SplitArrays(
        features=np.concatenate(feats),
        index=np.asarray(index, dtype=np.int64)[order],
        ids=[ids[i] for i in order],
    )


def make_processed(
    directory: str | Path,
    n_classes: int = 4,
    per_class: int = 12,
    channels: int = 8,
    bins: int = 8,
    frames: tuple[int, int] = (6, 12),
    seed: int = 0,
) -> Path:
    """Write a processed data set (train/val/test) to ``directory`` and return its path.

    Each class has its own mean (channels, bins) pattern plus unit-scale noise; train has
    ``per_class`` utterances per class, val and test half that (at least 2).
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((n_classes, channels, bins)).astype(np.float32)
    splits = {
        name: _split(rng, prototypes, max(2, int(per_class * frac)), frames, name)
        for name, frac in SPLIT_FRACTIONS.items()
    }
    fingerprint = hashlib.sha256(
        f"{n_classes}-{per_class}-{channels}-{bins}-{frames}-{seed}".encode()
    ).hexdigest()[:16]
    manifest = {
        "labels": [f"word{i}" for i in range(n_classes)],
        "num_channels": channels,
        "input_size": bins,
        "fingerprint": fingerprint,
        "normalization": {"mean": [0.0] * channels, "std": [1.0] * channels},
        "preprocessing": {"synthetic": True, "seed": seed},
    }
    return write_processed(directory, manifest, splits)


def tiny_overrides(processed: Path, work: Path, **extra: object) -> list[str]:
    """Config overrides for a tiny, fast CPU run on ``processed`` writing under ``work``."""
    values: dict[str, object] = {
        "data.processed_dir": str(processed),
        "model.input_size": 8,
        "model.hidden_size": 16,
        "model.num_layers": 1,
        "model.num_heads": 2,
        "model.dropout": 0.1,
        "model.max_frames": 64,
        # the tiny classes are static (electrode, band) patterns, which band centring removes
        # by design (a session's spectral shape); electrode centring keeps them
        "model.centring": "electrode",
        "training.num_epochs": 3,
        "training.batch_size": 8,
        "training.learning_rate": 0.003,
        "training.num_workers": 0,
        "training.log_interval": 2,
        "training.save_interval": 2,
        "training.viz_interval": 1,
        "training.device": "cpu",
        "training.checkpoint_dir": str(work / "checkpoints"),
        "training.output_dir": str(work / "outputs"),
        "tracking.mlflow.enabled": False,
        "tracking.wandb.enabled": False,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]
