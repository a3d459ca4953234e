"""The training loop: AdamW, label smoothing, gradient clipping, LR plateau schedule, early
stopping, checkpoints that resume exactly, validation plots, tracking, single process or DDP.

The :class:`Trainer` holds the loop (:meth:`Trainer.train_epoch`, :meth:`Trainer.validate`,
:meth:`Trainer._fit`); the data and loaders come from :mod:`ssr.training.loaders`, the
checkpoint state from :mod:`ssr.training.state` and rank 0's tracking and validation
artefacts from :mod:`ssr.training.reporting` (both mixins of the Trainer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ssr.config import Config
from ssr.evaluation import predict
from ssr.metrics import accuracy, confusion_matrix, macro_f1
from ssr.model import build_model
from ssr.progress import progress_bar
from ssr.storage import CheckpointPublisher
from ssr.tracking.base import NullTracker, Tracker
from ssr.training import distributed
from ssr.training.augment import augment_batch
from ssr.training.ctc import (
    check_task_model,
    ctc_loss,
    output_lengths,
    predict_transcripts,
    summarise,
)
from ssr.training.early_stopping import EarlyStopping
from ssr.training.loaders import load_splits, make_loaders, training_language_model
from ssr.training.reporting import Reporting
from ssr.training.runtime import (
    TrainingError,
    autocast,
    autocast_dtype,
    grad_scaler,
    oom_guard,
    rank_seed,
    release_freed_memory,
    rng_state,
    seed_everything,
    select_device,
    stop_workers,
)
from ssr.training.selection import early_best
from ssr.training.state import CheckpointState
from ssr.training.validation import in_dataset_order, session_metrics, session_scores

log = logging.getLogger(__name__)


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
    # the best epoch lies in the first tenth of training.num_epochs (ssr.training.selection)
    early_best: bool = False
    stopped_on_epoch: bool = False  # the on_epoch callback stopped it (a pruned tuning trial)


# Called by rank 0 after each validated epoch with the epoch and its history row (``epoch``,
# ``train_loss``, ``val_loss``, ``val_session_mean_loss``, ...); True stops the training there.
EpochCallback = Callable[[int, dict[str, float]], bool]


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale gradients so their total L2 norm is at most ``max_norm``; return the norm before."""
    return float(nn.utils.clip_grad_norm_(list(parameters), max_norm))


class Trainer(CheckpointState, Reporting):
    """Train the model in ``cfg`` on ``cfg.data.processed_dir``; see :meth:`fit`.

    ``on_epoch`` lets a caller watch the validation metrics and end the training early (the
    hyper-parameter search prunes a trial that way) without a loop of its own.
    """

    def __init__(
        self, cfg: Config, tracker: Tracker | None = None, on_epoch: EpochCallback | None = None
    ) -> None:
        self.cfg = cfg
        self.tracker: Tracker = tracker or NullTracker()
        self.on_epoch = on_epoch
        self._stopped_on_epoch = False
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
        self.sentences = cfg.task == "sentences"

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

    @property
    def _row_metrics(self) -> tuple[str, ...]:
        """The validation metrics of each epoch's history row besides the losses."""
        if self.sentences:
            return ("cer", "wer", "worst_session_cer")
        return ("accuracy", "worst_session_accuracy", "macro_f1")

    # -- set-up --------------------------------------------------------------------------------
    def _load_data(self) -> None:
        splits = load_splits(self.cfg, self.dist.world_size)
        self.train_set, self.val_set = splits.train_set, splits.val_set
        self.manifest, self.labels = splits.manifest, splits.labels
        self.language_model = None
        if self.sentences:  # built from the training transcripts (+ decoding.lm_text)
            self.language_model = training_language_model(self.cfg, self.train_set)

    def _loaders(self) -> None:
        lo = make_loaders(self.cfg, self.train_set, self.val_set, self.device, self.dist)
        self.sampler_generator, self.loader_generator = lo.sampler_generator, lo.loader_generator
        self.train_sampler, self.train_loader = lo.train_sampler, lo.train_loader
        self.val_loader, self.val_indices = lo.val_loader, lo.val_indices

    def _build(self) -> None:
        tc = self.cfg.training
        self.model = build_model(self.cfg.model, len(self.labels)).to(self.device)
        check_task_model(self.model, self.cfg)
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
            if self.sentences:
                loss = ctc_loss(logits, output_lengths(self.model, batch.lengths), batch)
            else:
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
            with distributed.gradient_sync_errors():  # DDP all-reduces inside backward
                self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.model.parameters(), tc.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.global_step += 1
            release_freed_memory(self.global_step)
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
        """Loss, accuracy and macro-F1 on the whole validation set (gathered over ranks), per
        recording session too, and the selection metric ``session_mean_loss``.

        The loss is plain cross-entropy, as ``ssr evaluate`` reports it: label smoothing is a
        training regulariser, and a smoothed loss has a floor that depends on the smoothing.
        Model selection, the LR schedule and early stopping use ``session_mean_loss``, the mean
        over sessions of each session's mean loss (the plain loss when there is one session),
        so that no single session decides. Per-utterance arrays are in dataset order.
        """
        with distributed.shared_failure(f"validating epoch {self.epoch}"):
            if self.sentences:
                out = predict_transcripts(
                    self.model, self.val_loader, self.device, self.labels, self.amp_dtype
                )
            else:
                out = predict(self.model, self.val_loader, self.device, self.amp_dtype)
            out["index"] = np.asarray(self.val_indices, dtype=np.int64)
        merged = in_dataset_order(distributed.gather_objects(out), len(self.val_set))
        if self.sentences:
            return summarise(self.val_set.ids, self.val_set.texts, merged)
        cm = confusion_matrix(merged["true"], merged["pred"], len(self.labels))
        sessions = session_scores(self.val_set.ids, merged["loss"], merged["true"], merged["pred"])
        return {
            "loss": float(merged["loss"].mean()),
            "accuracy": accuracy(cm),
            "macro_f1": macro_f1(cm),
            **session_metrics(sessions),
            "sessions": sessions,
            "y_true": merged["true"],
            "y_pred": merged["pred"],
            "confidence": merged["confidence"],
            "confusion_matrix": cm,
        }

    def _end_epoch(self, val: dict[str, Any], row: dict[str, float], improved: bool) -> None:
        """Rank 0: log the epoch, plot, checkpoint, then ask ``on_epoch`` (a tuning trial's
        pruner) whether to go on."""
        self._report_epoch(val, row, improved)
        self._save(improved)
        if self.on_epoch is not None and self.on_epoch(self.epoch, row):
            self._stop = self._stopped_on_epoch = True

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
            self._resume(resume, resume_state)
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
            release_freed_memory()
            self.scheduler.step(val["session_mean_loss"])
            improved = self.early_stopping.step(val["session_mean_loss"], self.epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            row = {
                "epoch": self.epoch,
                "train_loss": train_loss,
                "val_loss": val["loss"],
                "val_session_mean_loss": val["session_mean_loss"],
                **{f"val_{k}": val[k] for k in self._row_metrics},
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
                "early stopping: no improvement of the session-mean val loss for %d epochs "
                "(best %.4f at epoch %d)",
                tc.patience,
                self.early_stopping.best,
                self.early_stopping.best_epoch,
            )
        result = TrainResult(
            best_val_loss=self.early_stopping.best,
            best_epoch=self.early_stopping.best_epoch,
            epochs_run=self.epoch,
            stopped_early=stopped_early,
            best_checkpoint=self.best_checkpoint,
            history=list(self.history),
            stop_requested=self._stop,
            preempted=self._stop_now,
            early_best=early_best(self.early_stopping.best_epoch, tc.num_epochs),
            stopped_on_epoch=self._stopped_on_epoch,
        )
        if main:
            self._log_best()
            self._report_selection(
                {
                    "best_epoch": result.best_epoch,
                    "best_val_loss": result.best_val_loss,
                    "selection_metric": "val/session_mean_loss",
                    "epochs_run": result.epochs_run,
                    "num_epochs": tc.num_epochs,
                    "stopped_early": result.stopped_early,
                    "stop_requested": result.stop_requested,
                    "early_best": result.early_best,
                }
            )
        return result
