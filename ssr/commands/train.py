"""``ssr train``: train the spatiotemporal transformer on the processed data set."""

from __future__ import annotations

import argparse
import logging
import signal

from ssr.cli import add_config_args, config_from_args

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the model (single process or under torchrun)",
        description="Train on data.processed_dir; checkpoints go to training.checkpoint_dir, "
        "plots to training.output_dir. Launch under `torchrun` for DistributedDataParallel.",
    )
    add_config_args(parser)
    parser.add_argument(
        "--resume",
        default=None,
        metavar="PATH|auto",
        help="continue from a checkpoint (local path or s3:// URI); `auto` uses the newest "
        "complete one named by latest.json in training.checkpoint_dir, else starts fresh. "
        "On SIGTERM, training checkpoints after the current step and exits with 143",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start fresh even if training.checkpoint_dir holds another run's checkpoints "
        "(they are deleted first); without it, or --resume, such a folder is refused",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssr.training.job import run_training

    cfg = config_from_args(args)
    result = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    log.info(
        "done after %d epochs%s: best session-mean val loss %.4f at epoch %d; best checkpoint %s",
        result.epochs_run,
        " (early stop)" if result.stopped_early else "",
        result.best_val_loss,
        result.best_epoch,
        result.best_checkpoint,
    )
    if result.early_best and not result.stop_requested:  # a stopped run is not finished
        log.warning(
            "early best: the best epoch (%d of training.num_epochs=%d) lies in the first tenth "
            "of training; later epochs only did worse on the validation sessions, a sign that "
            "the model learns the training sessions rather than the task (check the data, "
            "lower training.learning_rate or add augmentation)",
            result.best_epoch,
            cfg.training.num_epochs,
        )
    if result.preempted:
        log.warning("stopped by SIGTERM; resume with --resume auto")
        return 128 + signal.SIGTERM  # 143, the conventional exit status after SIGTERM
    return 0
