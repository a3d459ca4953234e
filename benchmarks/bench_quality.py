"""Model quality on held-out sessions: the transformer against a log-RMS + logistic baseline.

Same synthetic data, same splits (val and test come from sessions never used in training),
same seed. The baseline lives here, not in the library: per channel, the log RMS of the
filtered EMG in 50 ms windows, resampled to 10 time bins and flattened, then a standardised
logistic regression. The transformers are trained with the project's trainer for a bounded
number of epochs and scored by ``ssr.evaluation.evaluate`` on the test split.

    .venv/bin/python benchmarks/bench_quality.py                # seed + small model (minutes)
    .venv/bin/python benchmarks/bench_quality.py --quick        # tiny data, small model, 1 epoch
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    SMALL_MODEL,
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


def baseline(data: BenchData, seed: int) -> dict[str, float]:
    """Fit the log-RMS logistic regression on train; score val and test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ssr.data.features import FeatureExtractor
    from ssr.data.preprocess import load_split
    from ssr.evaluation import accuracy, confusion_matrix, macro_f1

    cfg = data.cfg
    conditioner = FeatureExtractor.from_config(
        cfg, np.zeros(cfg.model.num_channels), np.ones(cfg.model.num_channels)
    )
    start = time.perf_counter()
    xy = {}
    for split, path in data.raw_dirs.items():
        utts = load_split(path, cfg, cfg.data.format)
        feats = np.stack(
            [log_rms_envelope(conditioner.filter(u.emg), u.sampling_rate) for u in utts]
        )
        xy[split] = (feats, [u.label for u in utts])
    labels = sorted(set(xy["train"][1]))
    ids = {label: i for i, label in enumerate(labels)}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, random_state=seed))
    clf.fit(xy["train"][0], [ids[y] for y in xy["train"][1]])
    out: dict[str, float] = {"seconds": time.perf_counter() - start, "params": clf[-1].coef_.size}
    for split in ("val", "test"):
        true = np.array([ids[y] for y in xy[split][1]])
        cm = confusion_matrix(true, clf.predict(xy[split][0]), len(labels))
        out[f"{split}_accuracy"], out[f"{split}_macro_f1"] = accuracy(cm), macro_f1(cm)
    return out


def transformer(
    data: BenchData, name: str, overrides: list[str], epochs: int, work: Path
) -> dict[str, float]:
    """Train with the project's trainer; score the best checkpoint on val and test."""
    from ssr.data.processed import read_manifest
    from ssr.evaluation import evaluate
    from ssr.model import build_model, parameter_count
    from ssr.tracking.base import NullTracker
    from ssr.training import run_training

    cfg = data.config(
        [
            *overrides,
            f"training.num_epochs={epochs}",
            "training.num_workers=0",
            f"training.checkpoint_dir={work / name / 'checkpoints'}",
            f"training.output_dir={work / name / 'outputs'}",
        ]
    )
    start = time.perf_counter()
    result = run_training(cfg, tracker=NullTracker())
    seconds = time.perf_counter() - start
    if not result.best_checkpoint:
        raise RuntimeError(f"{name}: training wrote no best checkpoint")
    n_labels = len(read_manifest(data.processed_dir)["labels"])
    out: dict[str, float] = {
        "seconds": seconds,
        "epochs": result.epochs_run,
        "params": parameter_count(build_model(cfg.model, n_labels)),
    }
    for split in ("val", "test"):
        res = evaluate(
            result.best_checkpoint,
            split,
            str(data.processed_dir),
            str(work / name / f"eval-{split}"),
            device="cpu",
        )
        out[f"{split}_accuracy"], out[f"{split}_macro_f1"] = res.accuracy, res.macro_f1
    return out


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{int(n):,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--seed", type=int, default=42, help="data, split and training seed")
    parser.add_argument(
        "--epochs-seed",
        type=int,
        default=5,
        help="epochs of the seed-sized model (full mode; 0 skips it)",
    )
    parser.add_argument(
        "--epochs-small",
        type=int,
        default=None,
        help="epochs of the small model (default 20, quick 1)",
    )
    args = parser.parse_args(argv)
    epochs_small = args.epochs_small or (1 if args.quick else 20)
    models = {"small transformer (hidden 64, 2 layers)": (SMALL_MODEL, epochs_small)}
    if not args.quick and args.epochs_seed > 0:
        models = {
            "seed transformer (configs/training_config.yaml)": ([], args.epochs_seed),
            **models,
        }

    set_threads(args.threads)
    print_machine("cpu")
    with tempfile.TemporaryDirectory(prefix="ssr-bench-") as tmp:
        work = Path(args.workdir or tmp)
        data = make_data(work, args.quick, seed=args.seed)
        from ssr.data.processed import read_manifest

        manifest = read_manifest(data.processed_dir)
        counts = {s: manifest["splits"][s]["utterances"] for s in ("train", "val", "test")}
        results = {
            f"log-RMS envelope ({TIME_BINS} bins) + logistic regression": baseline(data, args.seed)
        }
        for name, (ov, epochs) in models.items():
            results[name] = transformer(data, name.split()[0], ov, epochs, work)
    print(
        f"data: synthetic, {len(manifest['labels'])} words (chance "
        f"{100 / len(manifest['labels']):.0f}%), {counts['train']} train / {counts['val']} val /"
        f" {counts['test']} test utterances; val and test from sessions unseen in training; "
        f"seed {args.seed}"
    )
    rows = [
        [name, _count(r["params"]), str(int(r["epochs"])) if "epochs" in r else "-",
         f"{r['seconds']:.0f}", f"{100 * r['val_accuracy']:.1f}%",
         f"{100 * r['test_accuracy']:.1f}%", f"{r['test_macro_f1']:.3f}"]
        for name, r in results.items()
    ]  # fmt: skip
    print_table(
        ["model", "parameters", "epochs", "fit time (s)", "val accuracy", "test accuracy",
         "test macro-F1"],
        rows, [False, True, True, True, True, True, True],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
