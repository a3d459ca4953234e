"""``ssr preprocess``: raw EMG splits -> the processed, model-ready data set."""

from __future__ import annotations

import argparse
from typing import Any

from ssr.cli import add_config_args, config_from_args


def _run(args: argparse.Namespace) -> int:
    from ssr.data.preprocess import run_preprocess
    from ssr.data.processed import SPLITS, read_manifest

    cfg = config_from_args(args)
    out = run_preprocess(cfg)
    manifest = read_manifest(out)
    counts = ", ".join(f"{n} {manifest['splits'][n]['utterances']}" for n in SPLITS)
    print(f"processed data set: {out}")
    print(f"  utterances: {counts}; {len(manifest['labels'])} labels")
    print(f"  features per frame: {manifest['num_channels']} x {manifest['input_size']}")
    print(f"  fingerprint: {manifest['fingerprint']}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preprocess",
        help="filter, normalise and featurise the raw splits into data.processed_dir",
        description=(
            "Read data.train_dir/val_dir/test_dir (native .npz or Gaddy layout), validate them, "
            "notch + band-pass filter, normalise per channel with training statistics and write "
            "log band-power features to data.processed_dir (atomically)."
        ),
    )
    add_config_args(parser)
    parser.set_defaults(func=_run)
