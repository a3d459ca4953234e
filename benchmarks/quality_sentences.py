"""Sentence-mode model quality: WER and CER of the sentence preset on unseen sessions per data seed.

``bench_quality.py --task sentences`` runs, per data seed, the commands a user runs, then scores
the test split as ``ssr evaluate`` does.

Per data seed S, each in its own process with ``--threads`` torch threads (``--jobs`` at once):

1. ``ssr data synth --task sentences --seed S --profile P`` (default generator options: 9
   sessions, 5 for training, 2 validation and 2 test sessions never seen in training, held-out
   words, ``lm_text.txt``);
2. ``ssr preprocess --config configs/sentences_small.yaml ... decoding.lm_text=<lm_text.txt>``;
3. ``ssr train`` on the preset (``--set`` overrides, ``--epochs``), on the CPU, trackers off;
4. :func:`ssr.sentences.evaluation.evaluate_sentences` on the test split: the model greedy and
   with beam search + lexicon + LM, on sentences of known words and on sentences holding a word
   never seen in training, beside the linear CTC baseline decoded the same way (``--decoding``
   overrides the checkpoint's decoding settings; the LM itself is the checkpoint's).

    .venv/bin/python benchmarks/bench_quality.py --task sentences --threads 1 --jobs 2
    .venv/bin/python benchmarks/bench_quality.py --task sentences --seeds 1 \\
        --decoding decoding.lm_weight=1.5 decoding.word_score=3       # a decoding variant
    .venv/bin/python benchmarks/bench_quality.py --task sentences --quick   # tiny, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import NO_TRACKING, REPO, add_common_args, print_machine, print_table, set_threads

SENTENCE_CONFIG = REPO / "configs" / "sentences_small.yaml"
# --quick: a tiny data set (4 sessions of 6 sentences), a tiny model, 1 epoch
QUICK_SYNTH = ["--sentences", "6", "--sessions", "4", "--train-sessions", "2"]
QUICK_SYNTH += ["--val-sessions", "1", "--test-sessions", "1", "--lm-sentences", "200"]
QUICK_MODEL = ["model.hidden_size=32", "model.num_heads=2", "model.num_layers=1"]
# The targets: (key, label, bound, lower is better); None: reported only.
TARGETS: list[tuple[str, str, float | None, bool]] = [
    ("wer_known", "WER with LM, sentences of known words %", 15.0, True),
    ("wer_unseen", "WER with LM, sentences with unseen words %", None, True),
    ("wer", "WER with LM, all sentences %", None, True),
    ("greedy_wer", "greedy WER %", None, True),
    ("greedy_cer", "greedy CER %", None, True),
    ("baseline_wer", "baseline WER (LM) %", None, True),
    ("ratio", "model / baseline WER", 0.5, True),
    ("lm_cut", "LM WER cut vs greedy (relative) %", 30.0, False),
    ("train_minutes", "train minutes", None, True),
    ("total_minutes", "total minutes (synth to scores)", 20.0, True),
]
PERCENT = {"wer_known", "wer_unseen", "wer", "greedy_wer", "greedy_cer", "baseline_wer", "lm_cut"}


@dataclass
class SeedJob:
    """What one data seed's process needs (picklable for a spawned worker)."""

    seed: int
    work: Path
    profile: str
    quick: bool
    threads: int
    epochs: int | None
    overrides: list[str] = field(default_factory=list)
    decoding: list[str] = field(default_factory=list)


def _ssr(args: list[str], log: Path, threads: int) -> float:
    """Run ``python -m ssr ARGS`` (output appended to ``log``); wall seconds; raise on failure."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ ssr {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.call(
            [sys.executable, "-m", "ssr", *args], cwd=REPO, env=env, stdout=fh, stderr=fh
        )
    if rc != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"ssr {args[0]} {args[1] if len(args) > 1 else ''} exited {rc}:\n{tail}")
    return time.perf_counter() - start


def decoding_config(stored: Any, overrides: list[str]) -> Any:
    """The stored config's ``decoding`` section with ``decoding.KEY=VALUE`` overrides applied."""
    from ssr.config import config_from_dict
    from ssr.yaml_io import parse_override, set_dotted

    raw = stored.model_dump()
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    return config_from_dict(raw, "--decoding").decoding


def run_seed(job: SeedJob) -> dict[str, Any]:
    """Synthesise, preprocess, train and score data seed ``job.seed``; every number kept."""
    set_threads(job.threads)
    from ssr.sentences.evaluation import evaluate_sentences
    from ssr.training.checkpoint import load_checkpoint, restore_model

    start = time.perf_counter()
    out = job.work / f"sentences-{'quick-' if job.quick else ''}{job.profile}-{job.seed}"
    data, log = out / "data", out / "commands.log"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    synth = ["data", "synth", "--task", "sentences", "--seed", str(job.seed)]
    synth += ["--profile", job.profile, "--out", str(data), *(QUICK_SYNTH if job.quick else [])]
    seconds = {"synth": _ssr(synth, log, job.threads)}
    summary = json.loads((data / "synth.json").read_text())
    cfg = [*(f"data.{s}_dir={data / s}" for s in ("train", "val", "test"))]
    cfg += [f"data.processed_dir={data / 'processed'}", f"decoding.lm_text={summary['lm_text']}"]
    cfg += NO_TRACKING
    seconds["preprocess"] = _ssr(
        ["preprocess", "--config", str(SENTENCE_CONFIG), *cfg], log, job.threads
    )
    train = [*cfg, "training.num_workers=0", "training.device=cpu"]
    train += [f"training.checkpoint_dir={out / 'checkpoints'}"]
    train += [f"training.output_dir={out / 'outputs'}", *(QUICK_MODEL if job.quick else [])]
    if job.epochs:
        train.append(f"training.num_epochs={job.epochs}")
    train += job.overrides
    seconds["train"] = _ssr(
        ["train", "--config", str(SENTENCE_CONFIG), "--overwrite", *train], log, job.threads
    )
    trained = json.loads((out / "outputs" / "training_summary.json").read_text())
    eval_start = time.perf_counter()
    checkpoint = str(out / "checkpoints" / "best_model.pth")
    state = load_checkpoint(checkpoint)
    model, stored, _ = restore_model(state, checkpoint)
    result = evaluate_sentences(
        checkpoint,
        "test",
        str(data / "processed"),
        str(out / "eval"),
        model,
        stored,
        state,
        batch_size=stored.training.batch_size,
        decoding=decoding_config(stored, job.decoding),
    )
    seconds["evaluate"] = time.perf_counter() - eval_start
    return {
        "seed": job.seed,
        "metrics": result.metrics(),
        "training": trained,
        "seconds": seconds,
        "total_seconds": time.perf_counter() - start,
        "synth_options": summary["options"],
    }


def scores(run: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers of one data seed (fractions; minutes); None where undefined."""
    m = run["metrics"]
    base = m["baseline"]["wer"]
    greedy = m["greedy"]["wer"]
    return {
        "wer_known": m["known_words"]["wer"] if m["known_words"]["num_samples"] else None,
        "wer_unseen": m["unseen_words"]["wer"] if "unseen_words" in m else None,
        "wer": m["wer"],
        "greedy_wer": greedy,
        "greedy_cer": m["greedy"]["cer"],
        "baseline_wer": base,
        "ratio": m["wer"] / base if base > 0 else (0.0 if m["wer"] == 0 else math.inf),
        "lm_cut": (greedy - m["wer"]) / greedy if greedy > 0 else None,
        "train_minutes": run["seconds"]["train"] / 60,
        "total_minutes": run["total_seconds"] / 60,
    }


def _fmt(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if key in PERCENT:
        return f"{100 * value:.1f}"
    return f"{value:.2f}" if key == "ratio" else f"{value:.1f}"


def _verdict(key: str, value: float | None, bound: float | None, lower: bool) -> str:
    if bound is None or value is None:
        return _fmt(key, value)
    shown = 100 * value if key in PERCENT else value
    ok = shown <= bound if lower else shown >= bound
    return f"{_fmt(key, value)} {'PASS' if ok else 'MISS'}"


def summary_rows(cells: list[dict[str, Any]]) -> list[list[str]]:
    """Per measure: target, tuned mean, held-out mean, worst case (each PASS/MISS vs target)."""
    rows = []
    for key, label, bound, lower in TARGETS:
        target = "reported" if bound is None else f"{'<=' if lower else '>='} {bound:g}"
        row = [label, target]
        for group in ("tuned", "held out"):
            xs = [c[key] for c in cells if c["role"] == group and c[key] is not None]
            row.append(_verdict(key, statistics.mean(xs), bound, lower) if xs else "-")
        xs = [c[key] for c in cells if c[key] is not None]
        worst = (max(xs) if lower else min(xs)) if xs else None
        row.append(_verdict(key, worst, bound, lower))
        rows.append(row)
    return rows


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_quality.py --task sentences", description=__doc__.splitlines()[0]
    )
    add_common_args(parser)
    parser.set_defaults(threads=1)
    parser.add_argument("--task", choices=["sentences"], default="sentences")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="data seeds (default 1 2 3; quick 1)"
    )
    parser.add_argument(
        "--tune-seeds",
        type=int,
        nargs="*",
        default=[1],
        help="data seeds the recipe was tuned on (default 1); the others are held out",
    )
    from ssr.data.synth_profiles import PROFILES

    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="default", help="ssr data synth --profile"
    )
    parser.add_argument("--jobs", type=int, default=1, help="data seeds run in parallel (1)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the preset's; quick 1)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override of configs/sentences_small.yaml for ssr train (repeatable)",
    )
    parser.add_argument(
        "--decoding",
        nargs="+",
        action="extend",
        default=[],
        metavar="decoding.KEY=VALUE",
        help="decoding overrides for the evaluation, e.g. decoding.lm_weight=1.5 "
        "decoding.word_score=3 (the LM is the checkpoint's: lm_order changes nothing here)",
    )
    parser.add_argument("--json", default=None, help="also write every number to this file")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    if args.quick and args.epochs is None:
        args.epochs = 1
    bad = [d for d in args.decoding if not d.startswith("decoding.")]
    if bad:
        parser.error(f"--decoding takes decoding.KEY=VALUE, got {' '.join(bad)}")
    from ssr.config import load_config

    load_config(SENTENCE_CONFIG, [*args.overrides, *args.decoding])  # ConfigError early
    return args


def _run_all(jobs: list[SeedJob], n: int) -> list[dict[str, Any]]:
    if n <= 1:
        return [run_seed(job) for job in jobs]
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_seed, jobs))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    set_threads(args.threads)
    print_machine("cpu")
    with tempfile.TemporaryDirectory(prefix="ssr-bench-sentences-") as tmp:
        work = Path(args.workdir or tmp)
        common = (args.profile, args.quick, args.threads, args.epochs)
        jobs = [SeedJob(s, work, *common, args.overrides, args.decoding) for s in args.seeds]
        runs = _run_all(jobs, args.jobs)
    first = runs[0]
    opts, m = first["synth_options"], first["metrics"]
    unseen = m.get("unseen_words", {}).get("num_samples", 0)
    overrides = " ".join(args.overrides) or "none"
    print(
        f"data: synthetic sentences (ssr data synth --task sentences, profile {args.profile}), "
        f"{opts['sentences']} per session, {opts['sessions']} sessions: "
        f"{opts['train_sessions']} train, {len(m['per_session'])} test sessions never seen in "
        f"training ({m['num_samples']} test sentences on seed {first['seed']}, {unseen} with a "
        f"word unseen in training); configs/sentences_small.yaml, {args.threads} torch "
        f"thread(s) per data seed, {args.jobs} at once; data seeds tuned on: "
        f"{' '.join(map(str, args.tune_seeds)) or 'none'}; overrides: {overrides}; "
        f"decoding: {json.dumps(m['decoding'])}"
    )
    headers = ["data seed", "role", *(label for _, label, _, _ in TARGETS), "best epoch / epochs"]
    rows, cells = [], []
    for run in runs:
        role = "tuned" if run["seed"] in args.tune_seeds else "held out"
        cell = {"role": role, **scores(run)}
        cells.append(cell)
        t = run["training"]
        rows.append(
            [str(run["seed"]), role, *(_fmt(k, cell[k]) for k, *_ in TARGETS)]
            + [f"{t['best_epoch']}/{t['epochs_run']}"]
        )
    print_table(headers, rows, [True, False] + [True] * (len(headers) - 2))
    print_table(
        ["measure", "target", "tuned mean", "held-out mean", "worst case"],
        summary_rows(cells),
        [False, True, True, True, True],
    )
    if args.json:
        keep = {"args": {k: v for k, v in vars(args).items()}, "runs": runs, "scores": cells}
        Path(args.json).write_text(json.dumps(keep, indent=1, default=str))
    return 0
