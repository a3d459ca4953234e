"""Checkpoint state of a :class:`~ssr.training.trainer.Trainer`: what a checkpoint holds
(:meth:`CheckpointState.state`), restoring it, and publishing it as ``last``, ``best`` and
per-epoch copies; a mixin, so the trainer keeps its attributes."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ssr.config import Config
from ssr.errors import CheckpointError
from ssr.storage import CheckpointPublisher, exists, join
from ssr.storage import copy as copy_object
from ssr.tracking.base import Tracker
from ssr.training.checkpoint import (
    BEST,
    LAST,
    check_resumable,
    checkpoint_bytes,
    epoch_name,
    feature_state,
    load_checkpoint,
    load_weights,
)
from ssr.training.distributed import DistInfo
from ssr.training.early_stopping import EarlyStopping
from ssr.training.runtime import restore_rank_rng, rng_state

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class CheckpointState:
    """Save and restore the trainer's state; the attributes below are the trainer's."""

    cfg: Config
    tracker: Tracker
    dist: DistInfo
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    early_stopping: EarlyStopping
    scaler: torch.amp.GradScaler
    sampler_generator: torch.Generator
    loader_generator: torch.Generator
    labels: list[str]
    manifest: dict[str, Any]
    history: list[dict[str, float]]
    best_checkpoint: str | None
    publisher: CheckpointPublisher | None
    epoch: int
    global_step: int
    _rank_rngs: list[dict[str, Any]] | None
    _interrupted: bool
    _resume_progress: dict[str, Any] | None
    _epoch_progress: dict[str, Any]
    _epoch_start: tuple[torch.Tensor, torch.Tensor] | None

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as plain containers and tensors."""
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "best_val_loss": self.early_stopping.best,
            "best_epoch": self.early_stopping.best_epoch,
            "rng": rng_state(),
            "rng_ranks": self._rank_rngs or [rng_state()],  # every rank's, in rank order
            "scaler": self.scaler.state_dict(),  # empty unless fp16
            **self._generator_states(),
            "config": self.cfg.model_dump(),
            "labels": list(self.labels),
            "data_fingerprint": str(self.manifest.get("fingerprint", "")),
            **feature_state(self.manifest),
            "tracking": dict(self.tracker.run_ids()),
            "history": list(self.history),
            "world_size": self.dist.world_size,
            "epoch_progress": dict(self._epoch_progress) if self._interrupted else None,
            **self._language_model_state(),
        }

    def _language_model_state(self) -> dict[str, Any]:
        # task sentences: the lexicon and n-gram LM travel with the weights
        lm = getattr(self, "language_model", None)
        return {} if lm is None else {"language_model": lm.to_state()}

    def _generator_states(self) -> dict[str, torch.Tensor]:
        # Mid-epoch: the states at the epoch's start, so a resume replays the same shuffle.
        if self._interrupted and self._epoch_start is not None:
            sampler, loader = self._epoch_start
        else:
            sampler, loader = self.sampler_generator.get_state(), self.loader_generator.get_state()
        return {"sampler_generator": sampler, "loader_generator": loader}

    def _resume(self, resume: str | None, resume_state: dict[str, Any] | None) -> None:
        """Continue from ``resume_state``, else from the checkpoint at ``resume``."""
        if resume_state is None:
            resume_state = load_checkpoint(resume)  # type: ignore[arg-type]
        self._restore(resume_state, resume or "<resume state>")
        best = join(self.cfg.training.checkpoint_dir, BEST)
        self.best_checkpoint = best if exists(best, self.cfg.storage) else None

    def _restore(self, state: dict[str, Any], source: str) -> None:
        check_resumable(state, source, self.labels, self.cfg.model.model_dump())
        load_weights(self.model, state["model"], source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{source}: cannot restore the optimizer: {first}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.early_stopping.load_state_dict(state["early_stopping"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state.get("global_step", 0))
        self.history = list(state.get("history", []))
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        world, seed = self.dist.world_size, self.cfg.training.seed
        same_world = restore_rank_rng(state, self.dist.rank, world, seed, source)
        self.sampler_generator.set_state(state["sampler_generator"])
        self.loader_generator.set_state(state["loader_generator"])
        if state.get("epoch_progress"):  # saved mid-epoch: redo this epoch
            self.epoch -= 1
            if same_world:  # from its next batch; another world size shards it otherwise
                self._resume_progress = dict(state["epoch_progress"])
        log.info(
            "resumed from %s at epoch %d (step %d, best val loss %.4f)",
            source,
            self.epoch,
            self.global_step,
            self.early_stopping.best,
        )

    def _save(self, improved: bool) -> None:
        ckdir = self.cfg.training.checkpoint_dir
        state = self.state()
        data = checkpoint_bytes(state)
        names = [LAST] + ([BEST] if improved else [])
        if self.epoch % self.cfg.training.save_interval == 0 and not self._interrupted:
            names.append(epoch_name(self.epoch))
        # The resume copy goes up completely, then latest.json moves to it (ssr.storage.pointer);
        # the named copies are made from it, server-side on S3, so the bytes go up once.
        assert self.publisher is not None, "checkpoints are saved by the main rank inside fit()"
        pointer = self.publisher.publish(
            data, epoch=self.epoch, global_step=self.global_step, run_ids=state["tracking"]
        )
        source = join(ckdir, pointer.checkpoint)
        for name in names:
            path = join(ckdir, name)
            copy_object(source, path, self.cfg.storage)
            if name == BEST:
                self.best_checkpoint = path
        log.info("epoch %d: saved %s in %s", self.epoch, ", ".join(names), ckdir)
