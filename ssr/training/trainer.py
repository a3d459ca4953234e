"""The training loop: AdamW, label smoothing, gradient clipping, LR plateau schedule, early
stopping, checkpoints that resume exactly, validation plots, tracking, single process or DDP.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from ssr.config import Config
from ssr.data.processed import ProcessedSplit, collate
from ssr.errors import CheckpointError, ConfigError
from ssr.evaluation import predict
from ssr.metrics import accuracy, confusion_matrix, macro_f1
from ssr.model import build_model, parameter_count
from ssr.progress import progress_bar
from ssr.storage import (
    CheckpointPublisher,
    download_to,
    exists,
    is_s3,
    join,
    localize,
    upload_dir,
)
from ssr.storage import copy as copy_object
from ssr.tracking.base import NullTracker, Tracker
from ssr.tracking.context import describe_device
from ssr.training import distributed
from ssr.training.augment import augment_batch
from ssr.training.checkpoint import (
    BEST,
    LAST,
    check_resumable,
    checkpoint_bytes,
    epoch_name,
    feature_state,
    load_weights,
)
from ssr.training.early_stopping import EarlyStopping
from ssr.training.runtime import (
    TrainingError,
    autocast,
    autocast_dtype,
    grad_scaler,
    oom_guard,
    precision_name,
    rank_seed,
    restore_rank_rng,
    rng_state,
    seed_everything,
    select_device,
    stop_workers,
)
from ssr.training.signals import worker_ignores_sigterm
from ssr.training.validation_plots import plot_validation

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` achieved."""

    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    best_checkpoint: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    stop_requested: bool = False
    preempted: bool = False  # stopped by request_stop(now=True), e.g. SIGTERM


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale gradients so their total L2 norm is at most ``max_norm``; return the norm before."""
    return float(nn.utils.clip_grad_norm_(list(parameters), max_norm))


class Trainer:
    """Train the model in ``cfg`` on ``cfg.data.processed_dir``; see :meth:`fit`."""

    def __init__(self, cfg: Config, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        self.tracker: Tracker = tracker or NullTracker()
        self.device = select_device(cfg.training.device)
        tc = cfg.training
        self.dist = distributed.setup(self.device, tc.dist_timeout_s, tc.io_timeout_s)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.amp_dtype = autocast_dtype(tc.precision, self.device)
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        self._rank_rngs: list[dict[str, Any]] | None = None  # every rank's, gathered to save
        self._stop = False
        self._stop_now = False  # preemption: stop after the current step
        self._interrupted = False  # the current epoch was left part-way
        self._resume_progress: dict[str, Any] | None = None
        self._epoch_progress: dict[str, Any] = {}
        self._epoch_start: tuple[torch.Tensor, torch.Tensor] | None = None
        self._staging: Path | None = None
        self.publisher: CheckpointPublisher | None = None
        self.global_step = 0
        self.epoch = 0

    # -- stopping on request (e.g. a SIGTERM handler) ------------------------------------------
    def request_stop(self, now: bool = False) -> None:
        """Finish the current epoch (validate, checkpoint), then return from :meth:`fit`.

        ``now=True`` (preemption) stops after the current training step instead and saves a
        mid-epoch checkpoint that resumes exactly at the next batch.
        """
        self._stop = True
        self._stop_now = self._stop_now or now

    @property
    def stop_requested(self) -> bool:
        return self._stop

    # -- set-up --------------------------------------------------------------------------------
    def _load_data(self) -> None:
        root = self.cfg.data.processed_dir
        if is_s3(root):  # mirrored into the local cache, then memory-mapped from there
            root = str(localize(root, self.cfg.storage.cache_dir, self.cfg.storage))
        self.train_set = ProcessedSplit(root, "train")
        self.val_set = ProcessedSplit(root, "val")
        manifest = self.train_set.manifest
        self.manifest = manifest
        self.labels: list[str] = list(manifest["labels"])
        for key in ("num_channels", "input_size"):
            if key in manifest and int(manifest[key]) != getattr(self.cfg.model, key):
                raise ConfigError(
                    f"{root}/manifest.json: {key}={manifest[key]} but model.{key}="
                    f"{getattr(self.cfg.model, key)}; set model.{key}={manifest[key]}"
                )
        if len(self.val_set) < self.dist.world_size:
            raise ConfigError(
                f"{root}: the validation split has {len(self.val_set)} utterance(s), fewer than "
                f"the {self.dist.world_size} DDP processes; each rank validates its own share, "
                "so run fewer processes or use a larger validation split"
            )
        longest = int(max(self.train_set.lengths.max(), self.val_set.lengths.max()))
        if longest > self.cfg.model.max_frames:
            raise ConfigError(
                f"{root}: longest utterance has {longest} frames > model.max_frames="
                f"{self.cfg.model.max_frames}; set model.max_frames={longest} or more"
            )

    def _loaders(self) -> None:
        tc = self.cfg.training
        workers = tc.num_workers
        common: dict[str, Any] = {
            "batch_size": tc.batch_size,
            "collate_fn": collate,
            "num_workers": workers,
            "pin_memory": self.device.type == "cuda",
            "persistent_workers": workers > 0,
            "worker_init_fn": worker_ignores_sigterm if workers > 0 else None,
        }
        # The sampler's generator decides the shuffles and is checkpointed; the loader's own
        # generator only seeds worker processes (which draw nothing), so resume stays exact.
        self.sampler_generator = torch.Generator().manual_seed(tc.seed)
        self.loader_generator = torch.Generator().manual_seed(tc.seed + 1)
        if self.dist.enabled:
            self.train_sampler: Any = DistributedSampler(
                self.train_set,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=tc.seed,
            )
        else:
            self.train_sampler = RandomSampler(self.train_set, generator=self.sampler_generator)
        self.train_loader = DataLoader(
            self.train_set, sampler=self.train_sampler, generator=self.loader_generator, **common
        )
        # Validation is sharded without padding and gathered, so metrics count each once.
        val_part = Subset(
            self.val_set, range(self.dist.rank, len(self.val_set), self.dist.world_size)
        )
        # Its own generator: worker seeds drawn from the global RNG would shift dropout after
        # a resume (the first validation of a resumed run comes at another epoch).
        val_generator = torch.Generator().manual_seed(tc.seed + 2)
        self.val_loader = DataLoader(val_part, shuffle=False, generator=val_generator, **common)

    def _build(self) -> None:
        tc = self.cfg.training
        self.model = build_model(self.cfg.model, len(self.labels)).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=tc.lr_factor, patience=tc.lr_patience
        )
        self.early_stopping = EarlyStopping(tc.patience)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
        net: nn.Module = self.model
        if tc.compile:
            net = torch.compile(net)  # type: ignore[assignment]
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        self.train_model = net

    # -- checkpoints ---------------------------------------------------------------------------
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
        }

    def _generator_states(self) -> dict[str, torch.Tensor]:
        # Mid-epoch: the states at the epoch's start, so a resume replays the same shuffle.
        if self._interrupted and self._epoch_start is not None:
            sampler, loader = self._epoch_start
        else:
            sampler, loader = self.sampler_generator.get_state(), self.loader_generator.get_state()
        return {"sampler_generator": sampler, "loader_generator": loader}

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

    # -- one epoch -----------------------------------------------------------------------------
    def train_epoch(self) -> float:
        """One pass over the training set; returns the mean training loss over all ranks."""
        tc = self.cfg.training
        self.train_model.train()
        if isinstance(self.train_sampler, DistributedSampler):
            self.train_sampler.set_epoch(self.epoch)
        total, count = 0.0, 0
        progress, self._resume_progress = self._resume_progress, None
        skip = int(progress["batches_done"]) if progress else 0
        if progress:
            total, count = float(progress["loss_total"]), int(progress["loss_count"])
            log.info("epoch %d: continuing after batch %d", self.epoch, skip)
        self._epoch_start = (self.sampler_generator.get_state(), self.loader_generator.get_state())
        bar = progress_bar(
            self.train_loader,
            desc=f"epoch {self.epoch}/{tc.num_epochs}",
            leave=False,
            disable=not self.dist.is_main,
        )
        for i, batch in enumerate(bar):
            if i < skip:  # done before the preemption; the shuffle is replayed identically
                continue
            batch = augment_batch(batch, tc.augment, self.cfg.model.max_frames)
            batch = batch.to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                logits = self.train_model(batch.x, batch.padding_mask())
            loss = self.criterion(logits.float(), batch.labels)
            value, n = float(loss.detach()), len(batch.labels)
            # Before backward, one all-reduce: a bad loss on any rank stops every rank here.
            step = distributed.share_step(
                value * n, n, self._stop_now, math.isfinite(value), self.device
            )
            if step.bad_ranks:
                where = f" on rank(s) {step.bad_ranks}" if self.dist.enabled else ""
                raise TrainingError(
                    f"training loss became {value if not self.dist.enabled else 'non-finite'}"
                    f"{where} at step {self.global_step + 1}; lower training.learning_rate or "
                    "training.grad_clip, or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            # fp16: the scaler skips a step whose gradients overflowed (not divergence)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.model.parameters(), tc.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.global_step += 1
            total += step.loss_sum
            count += step.count
            mean = step.loss_sum / max(step.count, 1)
            bar.set_postfix(loss=f"{mean:.4f}")
            if self.global_step % tc.log_interval == 0 and self.dist.is_main:
                lr = self.optimizer.param_groups[0]["lr"]
                log.info(
                    "epoch %d step %d loss %.4f lr %.3g", self.epoch, self.global_step, mean, lr
                )
                self.tracker.log_metrics(
                    {"train/loss": mean, "train/lr": lr}, step=self.global_step
                )
            self._epoch_progress = {"batches_done": i + 1, "loss_total": total, "loss_count": count}
            if step.stop:
                self._interrupted = True
                break
        return total / max(count, 1)

    def validate(self) -> dict[str, Any]:
        """Loss, accuracy and macro-F1 on the whole validation set (gathered over ranks).

        The loss is plain cross-entropy, as ``ssr evaluate`` reports it: label smoothing is a
        training regulariser, and a smoothed loss has a floor that depends on the smoothing, so
        model selection, the LR schedule and early stopping all use the plain one.
        """
        with distributed.shared_failure(f"validating epoch {self.epoch}"):
            out = predict(self.model, self.val_loader, self.device, self.amp_dtype)
        parts = distributed.gather_objects(out)
        merged = {k: np.concatenate([p[k] for p in parts]) for k in out}
        cm = confusion_matrix(merged["true"], merged["pred"], len(self.labels))
        return {
            "loss": float(merged["loss"].mean()),
            "accuracy": accuracy(cm),
            "macro_f1": macro_f1(cm),
            "y_true": merged["true"],
            "y_pred": merged["pred"],
            "confidence": merged["confidence"],
            "confusion_matrix": cm,
        }

    def _output_dir(self) -> Path:
        """``training.output_dir``, or a local staging dir uploaded to it when it is s3."""
        out = self.cfg.training.output_dir
        if not is_s3(out):
            return Path(out)
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="ssr-outputs-"))
        return self._staging

    def _visualise(self, val: dict[str, Any]) -> None:
        outdir = self._output_dir()
        world = self.dist.world_size
        plot_validation(val, self.labels, self.val_set, world, outdir, self.epoch, self.tracker)
        if self._staging is not None:
            upload_dir(self._staging, self.cfg.training.output_dir, self.cfg.storage)

    def _start_run(self) -> None:
        """Rank 0: take over the checkpoint directory, log params and tags."""
        tc = self.cfg.training
        self.publisher = CheckpointPublisher(tc.checkpoint_dir, self.cfg.storage)
        self.tracker.log_params(self.cfg.flat())
        precision = precision_name(self.amp_dtype)
        self.tracker.set_tags(
            {
                "data.fingerprint": str(self.manifest.get("fingerprint", "")),
                # the device actually used (the tracker's own tag names the requested one);
                # git_commit and the versions are already in the tracker's run tags
                "device": describe_device(self.device.type),
                "torch": torch.__version__,
                "world_size": str(self.dist.world_size),
                "precision": precision,
            }
        )
        log.info(
            "model: %.2f M parameters, %d classes, device %s, %s, world size %d",
            parameter_count(self.model) / 1e6,
            len(self.labels),
            self.device,
            f"{precision} autocast" if self.amp_dtype else "fp32",
            self.dist.world_size,
        )

    def _end_epoch(self, val: dict[str, Any], row: dict[str, float], improved: bool) -> None:
        """Rank 0: log the epoch, plot, checkpoint."""
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val acc %.3f, macro-F1 %.3f, lr %.3g%s",
            self.epoch,
            row["train_loss"],
            val["loss"],
            val["accuracy"],
            val["macro_f1"],
            row["lr"],
            " (best)" if improved else "",
        )
        # Every scalar validate() returns is logged, so a new metric needs no edit here.
        scalars = {
            f"val/{k}": float(v)
            for k, v in val.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.tracker.log_metrics({**scalars, "lr": row["lr"], "epoch": self.epoch}, step=self.epoch)
        if self.epoch % self.cfg.training.viz_interval == 0:
            self._visualise(val)
        self._save(improved)

    # -- the loop ------------------------------------------------------------------------------
    def fit(
        self, resume: str | None = None, resume_state: dict[str, Any] | None = None
    ) -> TrainResult:
        """Train until ``num_epochs``, early stopping, or :meth:`request_stop`.

        ``resume`` is a checkpoint path (already loaded as ``resume_state`` if given).
        """
        try:
            with oom_guard(self.device):
                return self._fit(resume, resume_state)
        finally:
            stop_workers(getattr(self, "train_loader", None), getattr(self, "val_loader", None))

    def _fit(self, resume: str | None, resume_state: dict[str, Any] | None) -> TrainResult:
        tc = self.cfg.training
        seed_everything(tc.seed)
        self._load_data()
        self._build()  # the same initial weights on every rank
        if self.dist.rank:  # but each rank its own dropout and augmentation draws
            seed_everything(rank_seed(tc.seed, self.dist.rank))
        self._loaders()
        self.history: list[dict[str, float]] = []
        self.best_checkpoint: str | None = None
        if resume is not None or resume_state is not None:
            if resume_state is None:
                from ssr.training.checkpoint import load_checkpoint

                resume_state = load_checkpoint(resume)  # type: ignore[arg-type]
            self._restore(resume_state, resume or "<resume state>")
            best = join(tc.checkpoint_dir, BEST)
            self.best_checkpoint = best if exists(best, self.cfg.storage) else None
        main = self.dist.is_main
        # Rank 0's I/O (tracking, checkpoints, plots) runs while the others wait on the slow
        # group; a failure there ends every rank with the same error.
        with distributed.shared_failure("starting the run", slow=True):
            if main:
                self._start_run()
        stopped_early = self.early_stopping.should_stop
        while self.epoch < tc.num_epochs and not stopped_early and not self._stop:
            self.epoch += 1
            train_loss = self.train_epoch()
            if self._interrupted:  # preempted mid-epoch: save the position, skip validation
                self._rank_rngs = distributed.gather_objects(rng_state())
                with distributed.shared_failure(f"saving epoch {self.epoch}", slow=True):
                    if main:
                        self._save(improved=False)
                break
            val = self.validate()
            self.scheduler.step(val["loss"])
            improved = self.early_stopping.step(val["loss"], self.epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            row = {
                "epoch": self.epoch,
                "train_loss": train_loss,
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "lr": lr,
            }
            self.history.append(row)
            self._rank_rngs = distributed.gather_objects(rng_state())
            with distributed.shared_failure(f"ending epoch {self.epoch}", slow=True):
                if main:
                    self._end_epoch(val, row, improved)
            stopped_early = self.early_stopping.should_stop
            self._stop = distributed.any_true(self._stop, self.device)
        if stopped_early and main:
            log.info(
                "early stopping: no val-loss improvement for %d epochs (best %.4f at epoch %d)",
                tc.patience,
                self.early_stopping.best,
                self.early_stopping.best_epoch,
            )
        if main and self.best_checkpoint:
            best_local = self.best_checkpoint
            if is_s3(best_local):
                tmp = Path(tempfile.mkdtemp(prefix="ssr-best-")) / BEST
                best_local = str(download_to(best_local, tmp, self.cfg.storage))
            self.tracker.log_artifact(best_local, artifact_path="checkpoints")
        return TrainResult(
            best_val_loss=self.early_stopping.best,
            best_epoch=self.early_stopping.best_epoch,
            epochs_run=self.epoch,
            stopped_early=stopped_early,
            best_checkpoint=self.best_checkpoint,
            history=list(self.history),
            stop_requested=self._stop,
            preempted=self._stop_now,
        )
