"""What rank 0 of a :class:`~ssr.training.trainer.Trainer` reports besides checkpoints: the
run's parameters and tags, each epoch's metrics and validation plots (staged locally and
uploaded when ``training.output_dir`` is s3), the best checkpoint as an artefact; a mixin."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssr.config import Config
from ssr.data.processed import ProcessedSplit
from ssr.model import parameter_count
from ssr.storage import CheckpointPublisher, download_to, is_s3, upload_dir
from ssr.tracking.base import Tracker
from ssr.tracking.context import describe_device
from ssr.training.checkpoint import BEST
from ssr.training.distributed import DistInfo
from ssr.training.runtime import precision_name
from ssr.training.validation_plots import plot_validation

log = logging.getLogger(__name__)


class Reporting:
    """Rank 0's tracking and validation artefacts; the attributes below are the trainer's."""

    cfg: Config
    tracker: Tracker
    dist: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    model: nn.Module
    labels: list[str]
    manifest: dict[str, Any]
    val_set: ProcessedSplit
    publisher: CheckpointPublisher | None
    best_checkpoint: str | None
    epoch: int
    _staging: Path | None

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

    def _report_epoch(self, val: dict[str, Any], row: dict[str, float], improved: bool) -> None:
        """Rank 0: log the epoch's metrics, plot every ``training.viz_interval`` epochs."""
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

    def _log_best(self) -> None:
        """Rank 0: log the best checkpoint as an artefact of the run."""
        best_local = self.best_checkpoint
        if not best_local:
            return
        if is_s3(best_local):
            tmp = Path(tempfile.mkdtemp(prefix="ssr-best-")) / BEST
            best_local = str(download_to(best_local, tmp, self.cfg.storage))
        self.tracker.log_artifact(best_local, artifact_path="checkpoints")
