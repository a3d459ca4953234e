"""``ssr data``: synthetic data generation and raw-split checks."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from ssr.cli import add_config_args, config_from_args
from ssr.data.synth_profiles import PROFILES


def _synth(args: argparse.Namespace) -> int:
    from ssr.data.synth import SynthOptions, generate

    opts = SynthOptions(
        vocab=args.vocab,
        per_word=args.per_word,
        sessions=args.sessions,
        train_sessions=args.train_sessions,
        test_sessions=args.test_sessions,
        val_sessions=args.val_sessions,
        profile=args.profile,
        permuted=args.permuted,
        fmt=args.format,
        seed=args.seed,
        min_duration=args.duration[0],
        max_duration=args.duration[1],
        powerline_freq=args.powerline_freq,
    )
    summary = generate(args.out, opts)
    out = Path(summary["out_dir"])
    for name, split in summary["splits"].items():
        print(
            f"{name:5s} {split['dir']}  ({split['utterances']} utterances, "
            f"{split['seconds'] / 60:.1f} min, sessions {split['sessions']})"
        )
    print(f"summary: {out / 'synth.json'}")
    q = {name: shlex.quote(split["dir"]) for name, split in summary["splits"].items()}
    overrides = (
        f"data.train_dir={q['train']} data.val_dir={q['val']} data.test_dir={q['test']} "
        f"data.processed_dir={shlex.quote(str(out / 'processed'))}"
    )
    if args.powerline_freq != 60.0:
        overrides += f" data.powerline_freq={args.powerline_freq:g}"
    print("next:")
    print(f"  ssr preprocess --config configs/training_config.yaml {overrides}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from ssr.data.fingerprint import Fingerprint
    from ssr.data.preprocess import check_labels, check_repeats, scan_split

    cfg = config_from_args(args)
    dirs = {"train": cfg.data.train_dir, "val": cfg.data.val_dir, "test": cfg.data.test_dir}
    fingerprint = Fingerprint()
    scans = {name: scan_split(name, path, cfg, fingerprint) for name, path in dirs.items()}
    check_repeats(fingerprint)
    labels = check_labels(
        scans["train"].utterances,
        {n: scans[n].utterances for n in ("val", "test")},
        str(dirs["train"]),
    )
    for name, scan in scans.items():
        minutes = scan.seconds / 60
        print(f"{name:5s} {dirs[name]}: {len(scan.utterances)} utterances, {minutes:.1f} min")
    print(f"ok: {len(labels)} labels: {', '.join(labels)}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="generate synthetic EMG or check raw splits")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = sub.add_parser(
        "synth",
        help="write realistic synthetic sEMG train/val/test splits",
        description=(
            "Generate words as sequences of articulatory gestures driving muscle synergies over "
            "the electrodes, recorded in several sessions (gains, electrode shift, crosstalk, "
            "powerline hum, baseline wander, motion artefacts, noise). Val and test come from "
            "sessions not used for training. Same seed, same bytes."
        ),
    )
    synth.add_argument("--out", required=True, help="output directory (replaced atomically)")
    synth.add_argument("--vocab", type=int, default=10, help="number of words (default 10)")
    synth.add_argument(
        "--per-word", type=int, default=32, help="utterances per word over all sessions (32)"
    )
    synth.add_argument("--sessions", type=int, default=9, help="recording sessions (default 9)")
    synth.add_argument(
        "--train-sessions", type=int, default=5, help="sessions used for training (default 5)"
    )
    synth.add_argument(
        "--test-sessions",
        type=int,
        default=None,
        help="sessions held out for testing (default: the held-out sessions after the "
        "validation ones)",
    )
    synth.add_argument(
        "--val-sessions",
        type=int,
        default=None,
        help="sessions held out for validation, after the training ones (default: 2 where 3 or "
        "more are held out, else 1; with --test-sessions, what it leaves)",
    )
    synth.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="default",
        help="how sessions differ: "
        + "; ".join(f"{name}: {p.description}" for name, p in PROFILES.items()),
    )
    synth.add_argument(
        "--permuted",
        type=float,
        default=0.4,
        help="fraction of the vocabulary made of another word's gestures in another order "
        "(default 0.4; at most half)",
    )
    synth.add_argument("--format", choices=["native", "gaddy"], default="native")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--duration",
        type=float,
        nargs=2,
        default=[1.0, 2.0],
        metavar=("MIN", "MAX"),
        help="utterance length range in seconds (default 1 2)",
    )
    synth.add_argument(
        "--powerline-freq", type=float, default=60.0, help="mains hum frequency, Hz (60)"
    )
    synth.set_defaults(func=_synth)

    check = sub.add_parser(
        "check",
        help="read and validate the configured raw splits without writing anything",
    )
    add_config_args(check)
    check.set_defaults(func=_check)
