"""``ssr register``: add an evaluated checkpoint to the MLflow Model Registry as ``challenger``."""

from __future__ import annotations

import argparse

from ssr.cli import add_config_args, config_from_args
from ssr.errors import RegistryError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register an evaluated checkpoint as a new model version (alias challenger)",
        description="Log CHECKPOINT as a raw-EMG pyfunc model (plus the PyTorch flavour) with "
        "the test evaluation in EVAL_DIR, register it under registry.model_name and point the "
        "challenger alias at it. data.processed_dir must be the data set it was evaluated on. "
        "The checkpoint, EVAL_DIR and data.processed_dir may be s3:// URIs.",
    )
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="checkpoint file (.pth) or s3:// URI")
    parser.add_argument(
        "--eval-dir", required=True, help="output of `ssr evaluate --split test` (or s3:// URI)"
    )
    parser.add_argument(
        "--pipeline-run-id",
        default=None,
        help="recorded as a version tag; registering again with the same id returns the "
        "version already registered for it (a retried pipeline step adds no duplicate)",
    )
    parser.add_argument("--model-name", default=None, help="default: registry.model_name")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from ssr.registry.register import register_model
    from ssr.storage import localize

    cfg = config_from_args(args)
    # s3:// folders are mirrored into the local cache; the checkpoint is read straight from S3.
    cache = cfg.storage.cache_dir
    cfg.data.processed_dir = str(localize(cfg.data.processed_dir, cache, cfg.storage))
    eval_dir = str(localize(args.eval_dir, cache, cfg.storage))
    try:
        info = register_model(
            cfg,
            args.checkpoint,
            eval_dir,
            pipeline_run_id=args.pipeline_run_id,
            model_name=args.model_name,
        )
    except MlflowException as exc:
        raise RegistryError(f"MLflow refused the registration: {exc.message}") from None
    print(
        f"registered {info.model_uri} (alias {', '.join(info.aliases)}; {_scores(info.tags)}; "
        f"run {info.run_id})"
    )
    return 0


def _scores(tags: dict[str, str]) -> str:
    """The headline test score of a registered version: accuracy, or for sentences WER."""
    if tags.get("task") == "sentences":
        return f"test WER {tags['test.wer']}, CER {tags['test.cer']}"
    return f"test accuracy {tags['test.accuracy']}"
