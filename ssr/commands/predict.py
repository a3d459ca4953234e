"""``ssr predict``: classify (word model) or transcribe (sentence model) raw EMG recordings
with a registered model.

Recordings need no label: a native ``.npz`` with ``emg`` (and ``sampling_rate``, optional),
a Gaddy ``*_emg.npy`` (1000 Hz; its ``*_info.json``, when present, gives the rate and the true
label or sentence) or any other ``.npy`` holding a (time, channels) array at the model's
sampling rate. When a file carries its label, the true label is shown beside the prediction
(for a sentence model, the reference transcript, and the word error rate over the labelled
files). Every error names the file. The model is checked before it is loaded
(:mod:`ssr.registry.safe_load`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssr.data.formats import GADDY_SAMPLING_RATE
from ssr.errors import DataError
from ssr.progress import progress_bar
from ssr.sentences.scoring import score_texts
from ssr.sentences.units import normalise
from ssr.tracking.store import require_store

GADDY_EMG = re.compile(r"^(\d+)_emg\.npy$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify or transcribe recordings (.npz, Gaddy *_emg.npy, .npy) with a "
        "registered model",
        description="Load MODEL (e.g. models:/ssr-emg@champion; MLFLOW_TRACKING_URI names the "
        "server) and print label and confidence for each recording (a sentence model: the "
        'transcript and its confidence, as FILE: "text" (0.87)), and its true label when the '
        "file has one. The model must be one `ssr register` logged (checked before loading; "
        "loading a model runs its code, so use registries you trust).",
    )
    parser.add_argument("--model", default="models:/ssr-emg@champion", help="MLflow model URI")
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help=".npz, Gaddy *_emg.npy or .npy recordings"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON records (with p_<label>; a sentence model: text, confidence, "
        "greedy_text, true_text)",
    )
    parser.set_defaults(func=run)


@dataclass
class Recording:
    """A recording to classify: EMG (time, channels), its rate and label when the file says."""

    path: str
    emg: np.ndarray
    sampling_rate: float | None
    label: str | None


def _scalar(npz: Any, key: str, kind: type, path: str) -> Any:
    value = npz[key]
    if value.ndim != 0:
        raise DataError(f"{path}: {key!r} must be a single value, got shape {value.shape}")
    try:
        return kind(value.item())
    except (TypeError, ValueError):
        raise DataError(f"{path}: {key!r} is not a {kind.__name__}: {value.item()!r}") from None


def _read_npz(path: str) -> Recording:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz file (no zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "emg" not in npz.files:
                raise DataError(f"{path}: no 'emg' array (found {sorted(npz.files)})")
            emg = npz["emg"]
            rate = (
                _scalar(npz, "sampling_rate", float, path) if "sampling_rate" in npz.files else None
            )
            label = _scalar(npz, "label", str, path).strip() if "label" in npz.files else None
    except DataError:
        raise
    except Exception as exc:  # zip, header or truncated-data errors all mean "unreadable"
        raise DataError(f"{path}: unreadable .npz ({type(exc).__name__}: {exc})") from None
    return Recording(path, emg, rate, label or None)


def _gaddy_info(path: Path) -> tuple[float, str | None]:
    """Sampling rate and label from a Gaddy ``*_emg.npy``'s ``*_info.json`` (when present)."""

    match = GADDY_EMG.match(path.name)
    info_path = path.with_name(f"{match[1]}_info.json") if match else None
    if info_path is None or not info_path.is_file():
        return GADDY_SAMPLING_RATE, None
    try:
        info = json.loads(info_path.read_text())
        rate = float(info.get("sampling_rate", GADDY_SAMPLING_RATE))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise DataError(f"{path}: unreadable {info_path.name} ({exc})") from None
    except (TypeError, ValueError):
        raise DataError(f"{path}: {info_path.name} has a non-numeric sampling_rate") from None
    text = info.get("text")
    return rate, text.strip() if isinstance(text, str) and text.strip() else None


def read_recording(path: str) -> Recording:
    """One recording from a ``.npz``, Gaddy ``*_emg.npy`` or plain ``.npy`` file."""
    p = Path(path)
    _exists(path)
    if p.suffix == ".npz":
        return _read_npz(path)
    if p.suffix != ".npy":
        raise DataError(f"{path}: unsupported file type (expected .npz, *_emg.npy or .npy)")
    try:
        emg = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: unreadable .npy ({type(exc).__name__}: {exc})") from None
    rate, label = _gaddy_info(p) if GADDY_EMG.match(p.name) else (None, None)
    return Recording(path, emg, rate, label)


def _exists(path: str) -> None:
    if Path(path).is_dir():
        raise DataError(f"{path}: a folder; pass the recordings in it (e.g. {path}/*.npz)")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")


def _numeric(rec: Recording) -> np.ndarray:
    if not np.issubdtype(rec.emg.dtype, np.number) or np.iscomplexobj(rec.emg):
        raise DataError(f"{rec.path}: EMG must be real numbers, got dtype {rec.emg.dtype}")
    return np.asarray(rec.emg, np.float32)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ssr.registry.pyfunc_model import load_pyfunc

    for path in args.files:  # before the model is fetched
        _exists(path)
    if args.model.startswith("models:/"):  # a registry lookup: never create an empty store
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
        require_store(uri)
        mlflow.set_tracking_uri(uri)  # the store checked is the one looked in
    _, classifier = load_pyfunc(args.model)
    expected = classifier.extractor.sampling_rate
    recordings = []
    for path in progress_bar(
        args.files, desc="read", unit="file", leave=False, disable=len(args.files) < 20
    ):
        rec = read_recording(path)
        rec.emg = _numeric(rec)
        if rec.sampling_rate is not None and rec.sampling_rate != expected:
            raise DataError(
                f"{path}: sampled at {rec.sampling_rate:g} Hz, the model expects {expected:g} Hz"
            )
        classifier.check_recording(rec.emg, path)
        recordings.append(rec)
    features = classifier.featurise([r.emg for r in recordings], [r.path for r in recordings])
    frame = classifier.predict_frame(features)
    frame.insert(0, "file", list(args.files))
    truth = [r.label for r in recordings]
    if classifier.task == "sentences":
        frame["true_text"] = pd.Series(truth, dtype=object)
        if args.json:
            print(json.dumps(frame.to_dict(orient="records"), indent=2))
            return 0
        _print_transcripts(frame)
        return 0
    frame.insert(3, "true_label", pd.Series(truth, dtype=object))
    if args.json:
        print(json.dumps(frame.to_dict(orient="records"), indent=2))
        return 0
    _print_labels(frame, args.files)
    return 0


def _print_labels(frame: Any, files: list[str]) -> None:
    """A word model's table: file, label, confidence (and true label, accuracy)."""
    truth = list(frame["true_label"])
    labelled = [t is not None for t in truth]
    width = max(len("file"), *(len(f) for f in files))
    label_width = max(len("label"), *(len(str(v)) for v in frame["label"]))
    header = f"{'file':<{width}}  {'label':<{label_width}}  confidence"
    print(header + ("  true label" if any(labelled) else ""))
    for row in frame.itertuples(index=False):
        line = f"{row.file:<{width}}  {row.label:<{label_width}}  {row.confidence:10.3f}"
        if any(labelled):
            line += f"  {row.true_label if row.true_label is not None else '-'}"
        print(line)
    if any(labelled):
        scored = [(p, t) for p, t in zip(frame["label"], truth, strict=True) if t is not None]
        right = sum(p == t for p, t in scored)
        print(f"{right}/{len(scored)} labelled recordings classified correctly")


def _print_transcripts(frame: Any) -> None:
    """A sentence model's lines, ``FILE: "text" (confidence)`` and the reference when the file
    has one; then the word error rate over the recordings whose reference normalises."""
    refs, hyps, greedy = [], [], []
    for row in frame.itertuples(index=False):
        line = f'{row.file}: "{row.text}" ({row.confidence:.2f})'
        if row.true_text is not None:
            line += f'  reference: "{row.true_text}"'
            try:
                refs.append(normalise(row.true_text, row.file))
            except DataError:
                pass  # shown, not scored
            else:
                hyps.append(row.text)
                greedy.append(row.greedy_text)
        print(line)
    if refs:
        wer, greedy_wer = score_texts(refs, hyps).wer, score_texts(refs, greedy).wer
        print(
            f"WER {wer:.3f} over {len(refs)} labelled recording(s) "
            f"(greedy, no language model: {greedy_wer:.3f})"
        )
