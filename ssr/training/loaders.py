"""The data a :class:`~ssr.training.trainer.Trainer` trains on: the processed splits, checked
against the model config and the DDP world size, and their data loaders (a checkpointed shuffle
generator, sharded validation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from ssr.config import Config
from ssr.data.processed import LM_TEXT, ProcessedSplit, collate
from ssr.errors import ConfigError
from ssr.sentences.lm import LanguageModel, build_language_model, read_lm_text
from ssr.storage import is_s3, localize
from ssr.training.distributed import DistInfo
from ssr.training.signals import worker_ignores_sigterm


@dataclass
class Splits:
    """The training and validation splits and the manifest they share."""

    train_set: ProcessedSplit
    val_set: ProcessedSplit
    manifest: dict[str, Any]
    labels: list[str]


@dataclass
class Loaders:
    """The data loaders, the training sampler and the generators a checkpoint saves."""

    sampler_generator: torch.Generator
    loader_generator: torch.Generator
    train_sampler: Any  # RandomSampler, or DistributedSampler under DDP
    train_loader: DataLoader
    val_loader: DataLoader
    val_indices: list[int]  # the validation utterances of this rank's share, in loader order


def load_splits(cfg: Config, world_size: int) -> Splits:
    """Open ``cfg.data.processed_dir`` (mirrored locally first when it is s3) and check that it
    fits the model config and gives every one of ``world_size`` ranks a validation share."""
    root = cfg.data.processed_dir
    if is_s3(root):  # mirrored into the local cache, then memory-mapped from there
        root = str(localize(root, cfg.storage.cache_dir, cfg.storage))
    train_set = ProcessedSplit(root, "train")
    val_set = ProcessedSplit(root, "val")
    manifest = train_set.manifest
    if train_set.task != cfg.task:
        raise ConfigError(
            f"{root}/manifest.json: the data set was preprocessed for task {train_set.task}, "
            f"the config says task={cfg.task}; preprocess again with task={cfg.task} or set "
            f"task={train_set.task}"
        )
    labels: list[str] = list(manifest["labels"])
    for key in ("num_channels", "input_size"):
        if key in manifest and int(manifest[key]) != getattr(cfg.model, key):
            raise ConfigError(
                f"{root}/manifest.json: {key}={manifest[key]} but model.{key}="
                f"{getattr(cfg.model, key)}; set model.{key}={manifest[key]}"
            )
    if len(val_set) < world_size:
        raise ConfigError(
            f"{root}: the validation split has {len(val_set)} utterance(s), fewer than "
            f"the {world_size} DDP processes; each rank validates its own share, "
            "so run fewer processes or use a larger validation split"
        )
    longest = int(max(train_set.lengths.max(), val_set.lengths.max()))
    if longest > cfg.model.max_frames:
        raise ConfigError(
            f"{root}: longest utterance has {longest} frames > model.max_frames="
            f"{cfg.model.max_frames}; set model.max_frames={longest} or more"
        )
    return Splits(train_set, val_set, manifest, labels)


def make_loaders(
    cfg: Config,
    train_set: ProcessedSplit,
    val_set: ProcessedSplit,
    device: torch.device,
    dist: DistInfo,
) -> Loaders:
    """The loaders of this rank: its shuffled training shard and its validation share."""
    tc = cfg.training
    workers = tc.num_workers
    common: dict[str, Any] = {
        "batch_size": tc.batch_size,
        "collate_fn": collate,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "worker_init_fn": worker_ignores_sigterm if workers > 0 else None,
    }
    # The sampler's generator decides the shuffles and is checkpointed; the loader's own
    # generator only seeds worker processes (which draw nothing), so resume stays exact.
    sampler_generator = torch.Generator().manual_seed(tc.seed)
    loader_generator = torch.Generator().manual_seed(tc.seed + 1)
    train_sampler: Any
    if dist.enabled:
        train_sampler = DistributedSampler(
            train_set,
            num_replicas=dist.world_size,
            rank=dist.rank,
            shuffle=True,
            seed=tc.seed,
        )
    else:
        train_sampler = RandomSampler(train_set, generator=sampler_generator)
    train_loader = DataLoader(
        train_set, sampler=train_sampler, generator=loader_generator, **common
    )
    # Validation is sharded without padding and gathered, so metrics count each once.
    val_indices = list(range(dist.rank, len(val_set), dist.world_size))
    val_part = Subset(val_set, val_indices)
    # Its own generator: worker seeds drawn from the global RNG would shift dropout after
    # a resume (the first validation of a resumed run comes at another epoch).
    val_generator = torch.Generator().manual_seed(tc.seed + 2)
    val_loader = DataLoader(val_part, shuffle=False, generator=val_generator, **common)
    return Loaders(
        sampler_generator, loader_generator, train_sampler, train_loader, val_loader, val_indices
    )


def training_language_model(cfg: Config, train_set: ProcessedSplit) -> LanguageModel:
    """The word language model and lexicon of a sentence training, of order
    ``decoding.lm_order``: the training transcripts plus the data set's ``lm_text.txt`` (the
    ``decoding.lm_text`` it was preprocessed with) or else ``decoding.lm_text``."""
    text = list(train_set.texts)
    stored = train_set.root / LM_TEXT
    if stored.is_file():
        text += read_lm_text(str(stored))
    elif cfg.decoding.lm_text:
        text += read_lm_text(cfg.decoding.lm_text, cfg.storage)
    return build_language_model(text, cfg.decoding.lm_order)
