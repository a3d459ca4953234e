"""Model quality on unseen sessions over a grid of data sets: profiles x data seeds x training
seeds, the CPU-sized model against two linear baselines; worst case as well as the mean.

Each data set is a synthetic one (12 words, part of them the same gestures in another order; 6
training sessions, 2 validation, 4 test sessions never seen in training) drawn with one session
profile of ``ssr data synth --profile`` (how sessions differ: see ``ssr.data.synth_profiles``)
and one data seed. On each:

* plain envelope + LR: per channel log RMS of the filtered raw EMG in 50 ms windows, the whole
  recording resampled to 10 steps, standardised logistic regression (not channel-centred, no
  active-region crop: the weak baseline earlier versions compared against);
* the strong baseline :mod:`ssr.baseline` (what ``ssr evaluate`` and the gate use);
* ``configs/small.yaml`` (what ``make run-local`` trains) with each training seed, trained with
  the project's trainer (``--set`` adds overrides: an ablation is the same grid with one
  override);
* optionally the seed-sized ``configs/training_config.yaml`` for ``--epochs-seed`` epochs.

Data seeds in ``--tune-seeds`` are the part of the grid a recipe may be tuned on; the others are
reported as held out. Trainings run ``--jobs`` at a time, each in its own process with
``--threads`` torch threads.

    .venv/bin/python benchmarks/bench_quality.py --threads 1 --jobs 2   # the grid (about 1 h)
    .venv/bin/python benchmarks/bench_quality.py --seeds 1 --set training.ema=0   # an ablation
    .venv/bin/python benchmarks/bench_quality.py --quick                # tiny data, 1 epoch

``--task sentences`` measures the sentence task instead (WER/CER with and without the language
model against the linear CTC baseline, per data seed): see ``quality_sentences.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    CONFIG,
    SMALL_CONFIG,
    BenchData,
    add_common_args,
    make_data,
    print_machine,
    print_table,
    run_main,
    set_threads,
)

RMS_WINDOW_S = 0.05
TIME_BINS = 10
PLAIN = "plain envelope + LR"
STRONG = "strong baseline"
SMALL = "configs/small.yaml"
SEED = "configs/training_config.yaml (seed size)"
PROFILES = ["displaced", "speaker"]


def synth_options(quick: bool, seed: int, profile: str = "default"):  # -> SynthOptions
    """The benchmark's data: 2 validation and 4 unseen test sessions (tiny with ``quick``)."""
    from ssr.data.synth import SynthOptions

    if quick:
        return SynthOptions(
            vocab=4, per_word=7, sessions=7, train_sessions=3, seed=seed, profile=profile
        )
    return SynthOptions(
        vocab=12,
        per_word=48,
        sessions=12,
        train_sessions=6,
        test_sessions=4,
        seed=seed,
        profile=profile,
    )


def log_rms_envelope(filtered: np.ndarray, rate: float, bins: int = TIME_BINS) -> np.ndarray:
    """Per channel log RMS in 50 ms windows, linearly resampled to ``bins`` steps; flat (C*bins)."""
    win = max(1, int(round(RMS_WINDOW_S * rate)))
    n = filtered.shape[0] // win
    if n < 1:
        raise ValueError(f"recording of {filtered.shape[0]} samples is shorter than {win}")
    blocks = filtered[: n * win].reshape(n, win, filtered.shape[1]).astype(np.float64)
    env = np.log(np.sqrt((blocks**2).mean(axis=1)) + 1e-6)  # (n, C)
    src = (np.arange(n) + 0.5) / n
    dst = (np.arange(bins) + 0.5) / bins
    out = np.stack([np.interp(dst, src, env[:, c]) for c in range(env.shape[1])])  # (C, bins)
    return out.ravel().astype(np.float32)


def plain_baseline(data: BenchData, seed: int) -> dict[str, float]:
    """Fit the plain log-RMS logistic regression on the raw train split; score test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ssr.data.features import FeatureExtractor
    from ssr.data.preprocess import load_split
    from ssr.metrics import accuracy, confusion_matrix, macro_f1

    cfg = data.cfg
    conditioner = FeatureExtractor.from_config(
        cfg, np.zeros(cfg.model.num_channels), np.ones(cfg.model.num_channels)
    )
    start = time.perf_counter()
    xy = {}
    for split in ("train", "test"):
        utts = load_split(data.raw_dirs[split], cfg, cfg.data.format)
        feats = np.stack(
            [log_rms_envelope(conditioner.filter(u.emg), u.sampling_rate) for u in utts]
        )
        xy[split] = (feats, [u.label for u in utts])
    labels = sorted(set(xy["train"][1]))
    ids = {label: i for i, label in enumerate(labels)}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    clf.fit(xy["train"][0], [ids[y] for y in xy["train"][1]])
    true = np.array([ids[y] for y in xy["test"][1]])
    cm = confusion_matrix(true, clf.predict(xy["test"][0]), len(labels))
    return {
        "seconds": time.perf_counter() - start,
        "accuracy": accuracy(cm),
        "macro_f1": macro_f1(cm),
    }


def strong_baseline(data: BenchData) -> dict[str, float]:
    """:func:`ssr.baseline.score_baseline` on the test split."""
    from ssr.baseline import score_baseline

    score = score_baseline(str(data.processed_dir), "test")
    return {"seconds": score.fit_seconds, "accuracy": score.accuracy, "macro_f1": score.macro_f1}


def transformer(
    data: BenchData, config: Path, extra: list[str], work: Path, threads: int | None = None
) -> dict[str, float]:
    """Train ``config`` on ``data`` with the project's trainer; score the best checkpoint.

    ``work`` is this run's scratch folder: a previous run's checkpoints there are removed, so a
    kept ``--workdir`` trains afresh instead of being refused as another training's folder.
    """
    set_threads(threads)
    from ssr.evaluation import evaluate
    from ssr.tracking.base import NullTracker
    from ssr.training.job import run_training

    shutil.rmtree(work, ignore_errors=True)
    cfg = data.config(
        [
            *extra,
            "training.num_workers=0",
            f"training.checkpoint_dir={work / 'checkpoints'}",
            f"training.output_dir={work / 'outputs'}",
        ],
        config=config,
    )
    start = time.perf_counter()
    result = run_training(cfg, tracker=NullTracker())
    seconds = time.perf_counter() - start
    if not result.best_checkpoint:
        raise RuntimeError(f"{config.name}: training wrote no best checkpoint")
    res = evaluate(
        result.best_checkpoint,
        "test",
        str(data.processed_dir),
        str(work / "eval"),
        device="cpu",
        baseline=False,
    )
    return {
        "seconds": seconds,
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "accuracy": res.accuracy,
        "macro_f1": res.macro_f1,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "--task",
        choices=["words", "sentences"],
        default="words",
        help="words: this grid (default); sentences: per data seed WER/CER of the sentence "
        "preset, see `--task sentences --help`",
    )
    parser.add_argument(
        "--profiles", nargs="+", default=None, help=f"session profiles (default {PROFILES})"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="data seeds (default 1 2 3; quick 1)"
    )
    parser.add_argument(
        "--train-seeds",
        type=int,
        nargs="+",
        default=None,
        help="training seeds of configs/small.yaml on every data set (default 1 2; quick 1)",
    )
    parser.add_argument(
        "--tune-seeds",
        type=int,
        nargs="*",
        default=[1],
        help="data seeds the recipe was tuned on (default 1); the others are held out",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of configs/small.yaml (repeatable), e.g. for an ablation",
    )
    parser.add_argument("--jobs", type=int, default=1, help="trainings run in parallel (1)")
    parser.add_argument(
        "--epochs-seed",
        type=int,
        default=0,
        help="also train the seed-sized model for this many epochs (first training seed; 0 "
        "skips it, the default)",
    )
    parser.add_argument(
        "--epochs-small",
        type=int,
        default=None,
        help="epochs of configs/small.yaml (default: the file's; quick: 1)",
    )
    parser.add_argument("--json", default=None, help="also write every result to this file")
    args = parser.parse_args(argv)
    args.profiles = args.profiles or PROFILES
    args.seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    args.train_seeds = args.train_seeds or ([1] if args.quick else [1, 2])
    return args


def _jobs(args: argparse.Namespace, data: dict[tuple[str, int], BenchData], work: Path) -> list:
    small_extra = list(args.overrides)
    if args.quick or args.epochs_small:
        small_extra.append(f"training.num_epochs={args.epochs_small or 1}")
    jobs = []
    for (profile, seed), d in data.items():
        for ts in args.train_seeds:
            extra = [*small_extra, f"training.seed={ts}"]
            out = work / f"run-{profile}-{seed}-small-{ts}"
            jobs.append(((profile, seed, SMALL, ts), (d, SMALL_CONFIG, extra, out, args.threads)))
        if args.epochs_seed > 0 and not args.quick:
            ts = args.train_seeds[0]
            extra = [f"training.num_epochs={args.epochs_seed}", f"training.seed={ts}"]
            out = work / f"run-{profile}-{seed}-seed-{ts}"
            jobs.append(((profile, seed, SEED, ts), (d, CONFIG, extra, out, args.threads)))
    return jobs


def _run_jobs(jobs: list, n: int) -> dict[tuple, dict[str, float]]:
    if n <= 1:
        return {key: transformer(*job) for key, job in jobs}
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(transformer, *job) for key, job in jobs}
        return {key: f.result() for key, f in futures.items()}


def _summary_row(name: str, cells: list[dict[str, Any]]) -> list[str]:
    gains = [g for c in cells for g in c["gains"]]
    models = [a for c in cells for a in c["accs"]]
    return [
        name,
        str(len(cells)),
        _pct(statistics.mean(models)),
        _pct(statistics.mean(c["strong"] for c in cells)),
        f"{100 * statistics.mean(gains):+.1f}",
        f"{100 * min(gains):+.1f}",
        f"{100 * max(c['spread'] for c in cells):.1f}",
        f"{statistics.mean(c['seconds'] for c in cells):.0f}",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task = argparse.ArgumentParser(add_help=False)
    task.add_argument("--task", choices=["words", "sentences"], default="words")
    if task.parse_known_args(argv)[0].task == "sentences":
        from quality_sentences import main as sentences_main

        return sentences_main(argv)
    args = _parse(argv)
    set_threads(args.threads)
    print_machine("cpu")
    with tempfile.TemporaryDirectory(prefix="ssr-bench-") as tmp:
        work = Path(args.workdir or tmp)
        data: dict[tuple[str, int], BenchData] = {}
        baselines: dict[tuple[str, int], dict[str, dict[str, float]]] = {}
        for profile in args.profiles:
            for seed in args.seeds:
                opts = synth_options(args.quick, seed, profile)
                name = f"quality-{'quick-' if args.quick else ''}{profile}-{seed}"
                d = make_data(work, args.quick, seed=seed, options=opts, name=name)
                data[profile, seed] = d
                baselines[profile, seed] = {
                    PLAIN: plain_baseline(d, seed),
                    STRONG: strong_baseline(d),
                }
        results = _run_jobs(_jobs(args, data, work), args.jobs)
    overrides = " ".join(args.overrides) or "none"
    print(
        f"data: synthetic, {opts.vocab} words (chance {100 / opts.vocab:.0f}%), "
        f"{opts.train_sessions} train / {opts.num_val_sessions} val / {opts.num_test_sessions} "
        f"test sessions (test unseen in training); profiles {' '.join(args.profiles)}; data "
        f"seeds {' '.join(map(str, args.seeds))} (tuned on {' '.join(map(str, args.tune_seeds))}"
        f"); training seeds {' '.join(map(str, args.train_seeds))}; overrides: {overrides}"
    )
    headers = [
        "profile",
        "data seed",
        "role",
        "plain %",
        "strong baseline %",
        *(f"small, train seed {t} %" for t in args.train_seeds),
        "worst gain (points)",
        "seed spread (points)",
        "best epoch / epochs",
    ]
    if args.epochs_seed > 0 and not args.quick:
        headers.append(f"seed size, {args.epochs_seed} epochs %")
    rows, cells = [], []
    for (profile, seed), base in baselines.items():
        runs = [results[profile, seed, SMALL, t] for t in args.train_seeds]
        accs = [r["accuracy"] for r in runs]
        strong = base[STRONG]["accuracy"]
        role = "tuned" if seed in args.tune_seeds else "held out"
        cell = {
            "role": role,
            "accs": accs,
            "strong": strong,
            "gains": [a - strong for a in accs],
            "spread": max(accs) - min(accs),
            "seconds": statistics.mean(r["seconds"] for r in runs),
        }
        cells.append(cell)
        row = [
            profile,
            str(seed),
            role,
            _pct(base[PLAIN]["accuracy"]),
            _pct(strong),
            *(_pct(a) for a in accs),
            f"{100 * min(cell['gains']):+.1f}",
            f"{100 * cell['spread']:.1f}",
            " ".join(f"{int(r['best_epoch'])}/{int(r['epochs'])}" for r in runs),
        ]
        if args.epochs_seed > 0 and not args.quick:
            row.append(_pct(results[profile, seed, SEED, args.train_seeds[0]]["accuracy"]))
        rows.append(row)
    print_table(headers, rows, [False, True, False] + [True] * (len(headers) - 3))
    print()
    summary = [
        _summary_row(role, [c for c in cells if c["role"] == role])
        for role in ("tuned", "held out")
        if any(c["role"] == role for c in cells)
    ]
    summary.append(_summary_row("all", cells))
    print_table(
        [
            "data sets",
            "count",
            "mean model %",
            "mean strong baseline %",
            "mean gain (points)",
            "worst gain (points)",
            "largest seed spread (points)",
            "fit time (s, mean)",
        ],
        summary,
        [False] + [True] * 7,
    )
    if args.json:
        keyed = {"/".join(map(str, k)): v for k, v in results.items()}
        base = {f"{p}/{s}": v for (p, s), v in baselines.items()}
        Path(args.json).write_text(
            json.dumps({"overrides": args.overrides, "runs": keyed, "baselines": base}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
