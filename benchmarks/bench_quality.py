"""Model quality on unseen sessions: the transformers against two linear baselines, per data seed.

For each data seed a synthetic data set is generated (12 words, part of them the same gestures
in another order; 6 training sessions, 2 validation, 4 test sessions never seen in training)
and every model is fitted on its training split and scored on its test split:

* plain envelope + LR: per channel log RMS of the filtered raw EMG in 50 ms windows, the whole
  recording resampled to 10 steps, standardised logistic regression (not channel-centred, no
  active-region crop: the weak baseline earlier versions compared against);
* the strong baseline :mod:`ssr.baseline` (what ``ssr evaluate`` and the gate use);
* ``configs/small.yaml`` (what ``make run-local`` trains), trained with the project's trainer;
* the seed-sized ``configs/training_config.yaml`` for ``--epochs-seed`` epochs (0 skips it).

The table gives test accuracy per seed, mean and worst over seeds, macro-F1 (over the classes
present in the true labels) and fit time; the last column is the smallest gain over the strong
baseline on any seed.

    .venv/bin/python benchmarks/bench_quality.py --threads 1            # 3 seeds (about 1 h)
    .venv/bin/python benchmarks/bench_quality.py --threads 1 --epochs-seed 0   # without seed
    .venv/bin/python benchmarks/bench_quality.py --quick                # tiny data, 1 epoch
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
PLAIN = f"plain log-RMS envelope ({TIME_BINS} steps) + LR"
STRONG = "strong baseline (ssr.baseline)"
SMALL = "configs/small.yaml"
SEED = "configs/training_config.yaml (seed size)"


def synth_options(quick: bool, seed: int):  # -> SynthOptions
    """The benchmark's data: 4 unseen test sessions per seed (tiny with ``quick``)."""
    from ssr.data.synth import SynthOptions

    if quick:
        return SynthOptions(vocab=4, per_word=6, sessions=6, train_sessions=3, seed=seed)
    return SynthOptions(
        vocab=12, per_word=48, sessions=12, train_sessions=6, test_sessions=4, seed=seed
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


def transformer(data: BenchData, config: Path, extra: list[str], work: Path) -> dict[str, float]:
    """Train ``config`` on ``data`` with the project's trainer; score the best checkpoint.

    ``work`` is this run's scratch folder: a previous run's checkpoints there are removed, so a
    kept ``--workdir`` trains afresh instead of being refused as another training's folder.
    """
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
        "accuracy": res.accuracy,
        "macro_f1": res.macro_f1,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="data seeds (default 1 2 3; quick 1)"
    )
    parser.add_argument(
        "--epochs-seed",
        type=int,
        default=6,
        help="epochs of the seed-sized model (default 6; 0 skips it)",
    )
    parser.add_argument(
        "--epochs-small",
        type=int,
        default=None,
        help="epochs of configs/small.yaml (default: the file's; quick: 1)",
    )
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    small_extra = []
    if args.quick or args.epochs_small:
        small_extra = [f"training.num_epochs={args.epochs_small or 1}"]
    models: dict[str, tuple[Path, list[str]]] = {SMALL: (SMALL_CONFIG, small_extra)}
    if not args.quick and args.epochs_seed > 0:
        models[SEED] = (CONFIG, [f"training.num_epochs={args.epochs_seed}"])

    set_threads(args.threads)
    print_machine("cpu")
    results: dict[str, dict[int, dict[str, float]]] = {PLAIN: {}, STRONG: {}}
    results.update({name: {} for name in models})
    with tempfile.TemporaryDirectory(prefix="ssr-bench-") as tmp:
        work = Path(args.workdir or tmp)
        for seed in args.seeds:
            opts = synth_options(args.quick, seed)
            data = make_data(
                work,
                args.quick,
                seed=seed,
                options=opts,
                name=f"quality-{'quick-' if args.quick else ''}{seed}",
            )
            results[PLAIN][seed] = plain_baseline(data, seed)
            results[STRONG][seed] = strong_baseline(data)
            for name, (config, extra) in models.items():
                out = work / f"run-{seed}-{config.stem}"
                results[name][seed] = transformer(data, config, extra, out)
                print(
                    f"seed {seed}: {name}: test accuracy {_pct(results[name][seed]['accuracy'])}%"
                    f" (strong baseline {_pct(results[STRONG][seed]['accuracy'])}%)",
                    flush=True,
                )
    test_sessions = opts.num_test_sessions
    print(
        f"data: synthetic, {opts.vocab} words (--permuted {opts.permuted:g}: up to "
        f"{round(opts.permuted * opts.vocab)} of them another word's gestures reordered; chance "
        f"{100 / opts.vocab:.0f}%), "
        f"{opts.train_sessions} train / {opts.sessions - opts.train_sessions - test_sessions} "
        f"val / {test_sessions} test sessions, test sessions unseen in training; "
        f"data seeds {' '.join(map(str, args.seeds))}"
    )
    headers = [
        "model",
        *(f"seed {s} acc %" for s in args.seeds),
        "mean acc %",
        "worst acc %",
        "mean macro-F1",
        "worst gain over strong baseline (points)",
        "fit time (s, mean)",
        "epochs",
    ]
    rows = []
    for name, per_seed in results.items():
        accs = [per_seed[s]["accuracy"] for s in args.seeds]
        gains = [per_seed[s]["accuracy"] - results[STRONG][s]["accuracy"] for s in args.seeds]
        epochs = [int(per_seed[s]["epochs"]) for s in args.seeds if "epochs" in per_seed[s]]
        rows.append(
            [
                name,
                *(_pct(a) for a in accs),
                _pct(statistics.mean(accs)),
                _pct(min(accs)),
                f"{statistics.mean(per_seed[s]['macro_f1'] for s in args.seeds):.3f}",
                "-" if name == STRONG else f"{100 * min(gains):+.1f}",
                f"{statistics.mean(per_seed[s]['seconds'] for s in args.seeds):.1f}",
                "/".join(map(str, epochs)) if epochs else "-",
            ]
        )
    print_table(headers, rows, [False] + [True] * (len(headers) - 1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
