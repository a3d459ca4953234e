"""``ssr tune`` on the CPU-sized preset: wall time, trials complete/pruned, and whether the study
finds a config at least as good as ``configs/small.yaml`` on the validation sessions, with the
test accuracy of both reported (never selected on).

For each data seed (the default synthetic data of ``ssr data synth``, drawn with that seed):
an Optuna study of ``--trials`` trials of ``configs/small.yaml`` in the space
``configs/tune_space.yaml`` (:func:`ssr.tuning.study.run_study`, what ``ssr tune`` runs). The
space's trial 0 is ``configs/small.yaml`` itself (``baseline_trial``), so the preset's own
validation number comes from the same study, trained the same way; with ``baseline_trial:
false`` it is trained separately. Both best checkpoints are then scored on the test sessions.

The space was tuned on ``--tune-seed`` only; ``--held-out`` seeds run the same space unchanged:
a gain measured only on the data the space was tuned on is not a result.

    .venv/bin/python benchmarks/bench_tune.py --threads 1          # seeds 1 (tuned) and 2
    .venv/bin/python benchmarks/bench_tune.py --quick              # tiny data, 3 trials
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    REPO,
    SMALL_CONFIG,
    BenchData,
    add_common_args,
    make_data,
    print_machine,
    print_table,
    run_main,
    set_threads,
)

SPACE = REPO / "configs" / "tune_space.yaml"
# no epoch checkpoints (10 MB each for the small model) and no plots in the trials' folders
QUIET = ["training.save_interval=1000", "training.viz_interval=1000000", "training.num_workers=0"]


def _test_accuracy(data: BenchData, checkpoint: Path, out: Path) -> float:
    from ssr.evaluation import evaluate

    res = evaluate(
        str(checkpoint), "test", str(data.processed_dir), str(out), device="cpu", baseline=False
    )
    return float(res.accuracy)


def _separate_baseline(data: BenchData, extra: list[str], work: Path) -> tuple[float, Path]:
    """configs/small.yaml trained on its own, as a trial is (when the space has no baseline
    trial): its best session-mean val loss and best checkpoint."""
    from ssr.tracking.base import NullTracker
    from ssr.training.job import run_training

    folders = [f"training.checkpoint_dir={work / 'ck'}", f"training.output_dir={work / 'out'}"]
    cfg = data.config([*extra, *folders], config=SMALL_CONFIG)
    result = run_training(cfg, tracker=NullTracker(), overwrite=True)
    return result.best_val_loss, work / "ck" / "best_model.pth"


def study_on(data: BenchData, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the study on ``data``; its numbers and both models' test accuracy."""
    import optuna

    from ssr.tuning.space import load_space
    from ssr.tuning.storage import STUDY_DB
    from ssr.tuning.study import TuneOptions, run_study
    from ssr.tuning.trial import TRIALS_DIR

    extra = [*QUIET, *([f"training.num_epochs={args.epochs}"] if args.epochs else [])]
    cfg = data.config(extra, config=SMALL_CONFIG)
    space = load_space(args.space)
    out = work / "study"
    start = time.perf_counter()
    result = run_study(cfg, space, TuneOptions(str(out), args.trials, jobs=args.jobs))
    seconds = time.perf_counter() - start
    storage = f"sqlite:///{out / STUDY_DB}"
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    baseline = [t for t in trials if t.user_attrs.get("baseline") and t.value is not None]
    if baseline and baseline[0].state == optuna.trial.TrialState.COMPLETE:
        small_val = float(baseline[0].value)
        small_ckpt = out / TRIALS_DIR / f"{baseline[0].number:03d}" / "checkpoints"
        small_ckpt = small_ckpt / "best_model.pth"
    else:
        small_val, small_ckpt = _separate_baseline(data, extra, work / "small")
    if result.best_trial is None or result.best_value is None:
        raise RuntimeError(f"{data.root}: no trial of the study completed")
    best_ckpt = out / TRIALS_DIR / f"{result.best_trial:03d}" / "checkpoints" / "best_model.pth"
    epochs = sum(int(t.user_attrs.get("epochs", t.last_step or 0)) for t in trials)
    return {
        "seconds": seconds,
        "complete": result.complete,
        "pruned": result.pruned,
        "failed": result.failed,
        "epochs_run": epochs,
        "epoch_budget": len(trials) * cfg.training.num_epochs,
        "best_trial": result.best_trial,
        "best_val": result.best_value,
        "best_params": result.best_params,
        "small_val": small_val,
        "best_test": _test_accuracy(data, best_ckpt, work / "eval-best"),
        "small_test": _test_accuracy(data, small_ckpt, work / "eval-small"),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--trials", type=int, default=None, help="trials per study (8; quick 3)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once (ssr tune --jobs)")
    parser.add_argument("--tune-seed", type=int, default=1, help="data seed the space was tuned on")
    parser.add_argument(
        "--held-out", type=int, nargs="*", default=[2], help="data seeds held out (default 2)"
    )
    parser.add_argument(
        "--space", default=str(SPACE), help="search space (configs/tune_space.yaml)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training.num_epochs (default the preset's; quick 2)",
    )
    parser.add_argument("--json", default=None, help="also write every result to this file")
    args = parser.parse_args(argv)
    args.trials = args.trials or (3 if args.quick else 8)
    args.epochs = args.epochs or (2 if args.quick else None)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print_machine("cpu")
    seeds = [args.tune_seed, *args.held_out]
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ssr-bench-tune-") as tmp:
        work = Path(args.workdir or tmp)
        for seed in seeds:
            name = f"synth-{'quick-' if args.quick else ''}{seed}"
            data = make_data(work, args.quick, seed=seed, name=name)
            results[seed] = study_on(data, args, work / f"tune-{seed}")
    print(
        f"data: ssr data synth defaults{' (quick: tiny)' if args.quick else ''}, data seeds "
        f"{' '.join(map(str, seeds))} (space tuned on {args.tune_seed}); configs/small.yaml, "
        f"{args.trials} trials, --jobs {args.jobs}, {args.threads or 'default'} torch thread(s); "
        "val: best session-mean validation loss (lower is better); test: accuracy on the unseen "
        "test sessions of each one's best checkpoint"
    )
    rows = []
    for seed, r in results.items():
        rows.append(
            [
                str(seed),
                "tuned" if seed == args.tune_seed else "held out",
                f"{r['seconds'] / 60:.1f}",
                f"{r['complete']} / {r['pruned']} / {r['failed']}",
                f"{r['epochs_run']} / {r['epoch_budget']}",
                str(r["best_trial"]),
                f"{r['best_val']:.4f}",
                f"{r['small_val']:.4f}",
                f"{r['best_val'] - r['small_val']:+.4f}",
                f"{100 * r['best_test']:.1f}",
                f"{100 * r['small_test']:.1f}",
            ]
        )
    headers = [
        "data seed",
        "role",
        "wall time (min)",
        "trials complete / pruned / failed",
        "epochs run / budget",
        "best trial",
        "best val loss",
        "small.yaml val loss",
        "val change",
        "best test acc %",
        "small.yaml test acc %",
    ]
    print_table(headers, rows, [False, False] + [True] * 9)
    for seed, r in results.items():
        values = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in r["best_params"].items()
        )
        print(f"\nbest values, data seed {seed}: {values}")
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
