"""What rank 0 of a :class:`~ssr.training.trainer.Trainer` reports besides checkpoints: the
run's parameters and tags, each epoch's metrics and validation plots (staged locally and
uploaded when ``training.output_dir`` is s3), the best checkpoint as an artefact and, at the
end, the model-selection tags and ``training_summary.json``; a mixin."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssr.config import Config
from ssr.data.processed import ProcessedSplit
from ssr.data.sessions import session_groups
from ssr.fsutil import write_json
from ssr.model import parameter_count
from ssr.storage import CheckpointPublisher, download_to, is_s3, upload_dir
from ssr.tracking.base import Tracker
from ssr.tracking.context import describe_device
from ssr.tracking.lineage import describe_processed, log_data
from ssr.training.checkpoint import BEST
from ssr.training.distributed import DistInfo
from ssr.training.runtime import precision_name
from ssr.training.validation import SessionScore, worst_session
from ssr.training.validation_plots import plot_sentence_validation, plot_validation

log = logging.getLogger(__name__)

SUMMARY = "training_summary.json"  # written into training.output_dir at the end of fit


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

    def _publish_outputs(self) -> None:
        """Upload the staged outputs when ``training.output_dir`` is s3."""
        if self._staging is not None:
            upload_dir(self._staging, self.cfg.training.output_dir, self.cfg.storage)

    def _visualise(self, val: dict[str, Any]) -> None:
        outdir = self._output_dir()
        if self.cfg.task == "sentences":
            plot_sentence_validation(
                val, self.model, self.labels, self.val_set, outdir, self.epoch, self.tracker
            )
        else:
            plot_validation(val, self.labels, self.val_set, outdir, self.epoch, self.tracker)
        self._publish_outputs()

    def _start_run(self) -> None:
        """Rank 0: take over the checkpoint directory, log params, tags and the data set."""
        tc = self.cfg.training
        self.publisher = CheckpointPublisher(tc.checkpoint_dir, self.cfg.storage)
        self.tracker.log_params(self.cfg.flat())
        # lineage: the processed data set (its URI, as configured) with its fingerprint
        log_data(self.tracker, describe_processed(self.cfg.data.processed_dir, self.manifest))
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
        sessions: list[SessionScore] = val.get("sessions") or []
        sentences = self.cfg.task == "sentences"
        several = ""
        if len(sessions) > 1:
            worst = worst_session(sessions)
            score = f"CER {1 - worst.accuracy:.3f}" if sentences else f"acc {worst.accuracy:.3f}"
            several = (
                f", session-mean val loss {val['session_mean_loss']:.4f}, worst of "
                f"{len(sessions)} sessions {worst.name} {score}"
            )
        if sentences:
            quality = f"val CER {val['cer']:.3f}, WER {val['wer']:.3f} (greedy)"
        else:
            quality = f"val acc {val['accuracy']:.3f}, macro-F1 {val['macro_f1']:.3f}"
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, %s%s, lr %.3g%s",
            self.epoch,
            row["train_loss"],
            val["loss"],
            quality,
            several,
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

    def _report_selection(self, summary: dict[str, Any]) -> None:
        """Rank 0, at the end of fit: tag the run with the best epoch and whether it is an early
        best, and write ``training_summary.json`` (``summary`` plus the validation sessions)
        into ``training.output_dir``."""
        summary = {**summary, "val_sessions": list(session_groups(self.val_set.ids))}
        loss = summary.get("best_val_loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            summary["best_val_loss"] = None  # no epoch validated yet; JSON has no Infinity
        self.tracker.set_tags(
            {
                "selection.best_epoch": str(summary["best_epoch"]),
                "selection.early_best": str(bool(summary["early_best"])).lower(),
            }
        )
        write_json(self._output_dir() / SUMMARY, summary)
        self._publish_outputs()
        log.info(
            "%s/%s: best epoch %d of %d%s",
            self.cfg.training.output_dir.rstrip("/"),
            SUMMARY,
            summary["best_epoch"],
            summary["num_epochs"],
            " (early best)" if summary["early_best"] else "",
        )
