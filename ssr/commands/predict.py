"""``ssr predict``: classify raw EMG recordings with a registered model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ssr.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify recordings (.npz, Gaddy *_emg.npy) with a registered model",
        description="Load MODEL (e.g. models:/ssr-emg@champion; MLFLOW_TRACKING_URI names the "
        "server) and print label and confidence for each recording.",
    )
    parser.add_argument("--model", default="models:/ssr-emg@champion", help="MLflow model URI")
    parser.add_argument("files", nargs="+", metavar="FILE", help=".npz or *_emg.npy recordings")
    parser.add_argument("--json", action="store_true", help="print JSON records (with p_<label>)")
    parser.set_defaults(func=run)


def read_recording(path: str) -> tuple[np.ndarray, float | None]:
    """EMG (time, channels) and its sampling rate (None when the file does not say)."""
    from ssr.data.formats import GADDY_SAMPLING_RATE, read_native

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    if p.suffix == ".npz":
        utt = read_native(p)
        return np.asarray(utt.emg, np.float32), utt.sampling_rate
    if p.suffix == ".npy":
        try:
            emg = np.load(p, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{path}: unreadable .npy ({type(exc).__name__}: {exc})") from None
        return np.asarray(emg, np.float32), GADDY_SAMPLING_RATE
    raise DataError(f"{path}: unsupported file type (expected .npz or *_emg.npy)")


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    from tqdm import tqdm

    from ssr.registry.pyfunc_model import load_pyfunc

    pyfunc, classifier = load_pyfunc(args.model)
    recordings, rates = [], []
    for path in tqdm(
        args.files, desc="read", unit="file", leave=False, disable=len(args.files) < 20
    ):
        emg, rate = read_recording(path)
        classifier.extractor.check(emg, path)
        if rate is not None and rate != classifier.extractor.sampling_rate:
            raise DataError(
                f"{path}: sampled at {rate:g} Hz, the model expects "
                f"{classifier.extractor.sampling_rate:g} Hz"
            )
        recordings.append(emg.tolist())
        rates.append(rate if rate is not None else classifier.extractor.sampling_rate)
    frame = pyfunc.predict(pd.DataFrame({"emg": recordings, "sampling_rate": rates}))
    frame.insert(0, "file", list(args.files))
    if args.json:
        print(json.dumps(frame.to_dict(orient="records"), indent=2))
        return 0
    width = max(len("file"), *(len(f) for f in args.files))
    label_width = max(len("label"), *(len(str(v)) for v in frame["label"]))
    print(f"{'file':<{width}}  {'label':<{label_width}}  confidence")
    for row in frame.itertuples(index=False):
        print(f"{row.file:<{width}}  {row.label:<{label_width}}  {row.confidence:.3f}")
    return 0
