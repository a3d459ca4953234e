"""``ssr tune``: search hyper-parameters, an Optuna study whose trials are ``ssr train`` runs."""

from __future__ import annotations

import argparse
import logging
import signal

from ssr.cli import add_config_args, config_from_args
from ssr.tuning.space import load_space

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="search hyper-parameters: an Optuna study of training runs (resumable)",
        description="Train the config with values drawn from the search space (TPE sampler, "
        "median pruning on the session-mean validation loss per epoch), keep the study in "
        "OUT/study.db and the best trial's complete config in OUT/best.yaml. Running the same "
        "command again resumes the study. Each trial is an MLflow run nested under the "
        "study's and a W&B run in the group named after the study. See docs/tuning.md.",
    )
    add_config_args(parser)
    parser.add_argument(
        "--space", required=True, help="search space YAML (e.g. configs/tune_space.yaml)"
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=20,
        help="finished (complete or pruned) trials the study should have in all; a resumed "
        "study runs only the missing ones (default 20)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trials run at once, each in its own process with cores/jobs torch threads "
        "(default 1: trials one after another in this process, reproducible)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new trial after this many seconds (running trials finish)",
    )
    parser.add_argument(
        "--out",
        default="tune",
        help="the study's folder: study.db, best.yaml and trials/NNN/ (default: tune)",
    )
    parser.add_argument(
        "--study-name",
        default=None,
        help="default: the --out folder's name; also the W&B group and the name of the "
        "study's MLflow run",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ssr.tuning.study import TuneOptions, run_study
    from ssr.tuning.trial import TuneError, TuneInterruptedError

    cfg = config_from_args(args)
    space = load_space(args.space)
    options = TuneOptions(
        out_dir=args.out,
        trials=args.trials,
        jobs=args.jobs,
        timeout=args.timeout,
        study_name=args.study_name,
        trial_log_level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        space_file=args.space,
    )
    try:
        result = run_study(cfg, space, options)
    except TuneInterruptedError as exc:
        log.warning("%s", exc)
        return 128 + signal.SIGTERM
    log.info(
        "study %s: %d complete, %d pruned, %d failed trials (%d run now, %.1f min); storage %s",
        result.study_name,
        result.complete,
        result.pruned,
        result.failed,
        result.ran,
        result.seconds / 60,
        result.storage,
    )
    if result.best_config is None:
        raise TuneError(
            f"study {result.study_name}: no trial completed, so there is no best config"
        )
    values = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in result.best_params.items()
    )
    log.info(
        "best: trial %d, session-mean val loss %.4f (%s); its config: %s (ssr train --config %s)",
        result.best_trial,
        result.best_value,
        values,
        result.best_config,
        result.best_config,
    )
    return 0
