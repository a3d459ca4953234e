"""``ssr data``: synthetic data generation and raw-split checks."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from ssr.cli import add_config_args, config_from_args
from ssr.data.synth_profiles import PROFILES
from ssr.errors import ConfigError

# Options of one task only (argparse default None), with their defaults.
_WORD_OPTIONS = {"vocab": 10, "per_word": 32, "permuted": 0.4, "duration": [1.0, 2.0]}
_SENTENCE_OPTIONS = {"sentences": 80, "unseen_words": 0.1, "open_share": 0.3, "lm_sentences": 3000}


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args.task`` with defaults filled; another task's option is an error."""
    own, other = (
        (_WORD_OPTIONS, _SENTENCE_OPTIONS)
        if args.task == "words"
        else (_SENTENCE_OPTIONS, _WORD_OPTIONS)
    )
    given = ["--" + k.replace("_", "-") for k in other if getattr(args, k) is not None]
    if given:
        other_task = "sentences" if args.task == "words" else "words"
        raise ConfigError(f"synth: {', '.join(given)}: only for --task {other_task}")
    return {
        k: default if getattr(args, k) is None else getattr(args, k) for k, default in own.items()
    }


def _shared_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "sessions": args.sessions,
        "train_sessions": args.train_sessions,
        "test_sessions": args.test_sessions,
        "val_sessions": args.val_sessions,
        "profile": args.profile,
        "fmt": args.format,
        "seed": args.seed,
        "powerline_freq": args.powerline_freq,
    }


def _synth(args: argparse.Namespace) -> int:
    task = _task_options(args)
    config = "configs/training_config.yaml"
    if args.task == "sentences":
        from ssr.data.synth_sentences import SentenceOptions, generate_sentences

        summary = generate_sentences(args.out, SentenceOptions(**task, **_shared_options(args)))
        config = "configs/sentences_small.yaml"
    else:
        from ssr.data.synth import SynthOptions, generate

        duration = task.pop("duration")
        opts = SynthOptions(
            **task,
            **_shared_options(args),
            min_duration=duration[0],
            max_duration=duration[1],
        )
        summary = generate(args.out, opts)
    out = Path(summary["out_dir"])
    for name, split in summary["splits"].items():
        print(
            f"{name:5s} {split['dir']}  ({split['utterances']} utterances, "
            f"{split['seconds'] / 60:.1f} min, sessions {split['sessions']})"
        )
    print(f"summary: {out / 'synth.json'}")
    if "lm_text" in summary:
        lm = shlex.quote(summary["lm_text"])
        print(f"language-model text: {summary['lm_text']} (decoding.lm_text={lm})")
    q = {name: shlex.quote(split["dir"]) for name, split in summary["splits"].items()}
    overrides = (
        f"data.train_dir={q['train']} data.val_dir={q['val']} data.test_dir={q['test']} "
        f"data.processed_dir={shlex.quote(str(out / 'processed'))}"
    )
    if args.powerline_freq != 60.0:
        overrides += f" data.powerline_freq={args.powerline_freq:g}"
    print("next:")
    print(f"  ssr preprocess --config {config} {overrides}")
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
            "sessions not used for training. Same seed, same bytes. With --task sentences: "
            "sentences of a shipped word list spelled with letter gestures (several letters "
            "share one), some val/test words never seen in training, and lm_text.txt for the "
            "language model."
        ),
    )
    synth.add_argument("--out", required=True, help="output directory (replaced atomically)")
    synth.add_argument(
        "--task",
        choices=["words", "sentences"],
        default="words",
        help="words: one word per utterance (default); sentences: sentences of a shipped word "
        "list spelled with letter gestures, with held-out words and a language-model text",
    )
    synth.add_argument("--vocab", type=int, default=None, help="words: number of words (10)")
    synth.add_argument(
        "--per-word",
        type=int,
        default=None,
        help="words: utterances per word over all sessions (32)",
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
        default=None,
        help="words: fraction of the vocabulary made of another word's gestures in another "
        "order (default 0.4; at most half)",
    )
    synth.add_argument(
        "--sentences", type=int, default=None, help="sentences: utterances per session (80)"
    )
    synth.add_argument(
        "--unseen-words",
        type=float,
        default=None,
        help="sentences: share of the content words (adjectives, nouns, verbs) held out of "
        "training (default 0.1, at most 0.5)",
    )
    synth.add_argument(
        "--open-share",
        type=float,
        default=None,
        help="sentences: share of val/test sentences holding a held-out word (default 0.3)",
    )
    synth.add_argument(
        "--lm-sentences",
        type=int,
        default=None,
        help="sentences: grammar sentences in lm_text.txt, none equal to a val/test one (3000)",
    )
    synth.add_argument("--format", choices=["native", "gaddy"], default="native")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--duration",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="words: utterance length range in seconds (default 1 2; sentences take as long "
        "as their text)",
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
