"""``ssr preprocess``: raw EMG splits -> validated, filtered, normalised spectral features on disk.

Two streaming passes, so memory holds one recording at a time whatever the data set's size:

1. every file of every split is read and checked, fingerprinted, and its label and length
   recorded; training recordings are filtered, folded into the per-channel statistics and
   spilled (filtered, float32) to a temporary file beside the output;
2. with the statistics fixed, features are computed utterance by utterance straight into the
   memory-mapped arrays of the new data set (training from the spill file, val/test re-read).

Nothing is written before pass 1 has checked everything; the processed data set then appears
atomically at ``data.processed_dir`` (see :mod:`ssr.data.processed`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

import ssr
from ssr.config import Config
from ssr.data.features import PREPROCESSING_KEYS, FeatureExtractor
from ssr.data.fingerprint import Fingerprint
from ssr.data.formats import Utterance, iter_dir
from ssr.data.processed import LM_TEXT, SPLITS, SplitStream, write_processed
from ssr.data.running_stats import RunningStats
from ssr.errors import DataError
from ssr.progress import progress_bar
from ssr.sentences.lm import read_lm_text
from ssr.sentences.units import check_fits, normalise, output_labels
from ssr.storage import is_s3, localize, publish

__all__ = [
    "FeatureExtractor",
    "RunningStats",
    "SplitScan",
    "Utterance",
    "check_labels",
    "check_repeats",
    "load_split",
    "run_preprocess",
    "scan_split",
    "validate_utterance",
]

log = logging.getLogger(__name__)


class Labelled(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def label(self) -> str: ...


def validate_utterance(utt: Utterance, cfg: Config) -> None:
    """Raise :class:`DataError` naming the file if ``utt`` does not fit the config.

    Checked: 2-D real (integer or float, not complex or bool) samples, the channel count and
    sampling rate of the config, at least one analysis window of samples, no NaN or infinite
    sample, and no flat channel (a dead electrode or an all-zero recording).
    """
    emg = utt.emg
    if emg.ndim != 2:
        raise DataError(f"{utt.path}: EMG must be 2-D (time, channels), got shape {emg.shape}")
    if emg.dtype.kind not in "iuf":
        raise DataError(
            f"{utt.path}: EMG must be real integer or float samples, got dtype {emg.dtype}"
        )
    channels = cfg.model.num_channels
    if emg.shape[1] != channels:
        raise DataError(f"{utt.path}: {emg.shape[1]} channels but model.num_channels is {channels}")
    rate = float(cfg.data.sampling_rate)
    if not math.isfinite(utt.sampling_rate) or abs(utt.sampling_rate - rate) > 1e-6 * rate:
        raise DataError(
            f"{utt.path}: sampling rate {utt.sampling_rate:g} Hz but data.sampling_rate "
            f"is {rate:g} Hz"
        )
    window = cfg.data.window_size
    if emg.shape[0] < window:
        raise DataError(
            f"{utt.path}: {emg.shape[0]} samples, shorter than one window "
            f"(data.window_size={window})"
        )
    if not np.all(np.isfinite(emg)):
        bad = int(np.count_nonzero(~np.isfinite(emg)))
        raise DataError(f"{utt.path}: {bad} NaN or infinite sample(s)")
    flat = np.flatnonzero(np.ptp(emg, axis=0) == 0)
    if flat.size:
        what = "every channel is" if flat.size == channels else f"channel(s) {flat.tolist()} are"
        raise DataError(
            f"{utt.path}: {what} flat (constant value); a dead electrode or an empty recording "
            "cannot be trained on"
        )


def _checked(directory: Path, cfg: Config, progress: str) -> Iterator[Utterance]:
    count = 0
    for utt in iter_dir(directory, cfg.data.format, progress=progress):
        validate_utterance(utt, cfg)
        count += 1
        yield utt
    if not count:
        raise DataError(f"{directory}: empty split (no utterances)")


def load_split(
    directory: str | os.PathLike[str], cfg: Config, fmt: str | None = None
) -> list[Utterance]:
    """Read and validate every utterance of one split directory (see :func:`validate_utterance`).

    An empty split is a :class:`DataError` too. ``fmt`` overrides ``data.format``.
    """
    if fmt is not None and fmt != cfg.data.format:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"format": fmt})})
    directory = Path(directory)
    return list(_checked(directory, cfg, f"read {directory.name}"))


@dataclass(frozen=True)
class UtteranceInfo:
    """What pass 1 keeps of an utterance: where it is, its label and its length in samples."""

    path: str
    label: str
    samples: int
    seconds: float


@dataclass
class SplitScan:
    """A checked split: its directory and every utterance's info, in reading order."""

    directory: Path
    utterances: list[UtteranceInfo] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)


def scan_split(
    name: str,
    directory: str | os.PathLike[str],
    cfg: Config,
    fingerprint: Fingerprint | None = None,
    visit: Callable[[Utterance], None] | None = None,
) -> SplitScan:
    """Check every utterance of a split, one in memory at a time; ``visit`` sees each one."""
    scan = SplitScan(Path(directory))
    if fingerprint is not None:
        fingerprint.split(name)
    for utt in _checked(scan.directory, cfg, f"check {name}"):
        if fingerprint is not None:
            fingerprint.add(name, utt, scan.directory)
        if visit is not None:
            visit(utt)
        scan.utterances.append(UtteranceInfo(utt.path, utt.label, utt.emg.shape[0], utt.seconds))
    return scan


def check_repeats(fingerprint: Fingerprint) -> None:
    """A recording in two splits (train/test leakage) is a :class:`DataError`; one repeated
    inside a split is a warning. Recordings are compared by their samples only."""
    groups = fingerprint.repeated()
    leaks = [g for g in groups if len({split for split, _ in g}) > 1]
    if leaks:
        first = ", ".join(f"{split}: {path}" for split, path in leaks[0])
        raise DataError(
            f"{first}: the same recording is in more than one split ({len(leaks)} such "
            "recording(s)); held-out scores would be meaningless"
        )
    if groups:
        copies = sum(len(g) - 1 for g in groups)
        first = " = ".join(path for _, path in groups[0])
        log.warning(
            "%d duplicate recording(s) within a split (identical samples), e.g. %s",
            copies,
            first,
        )


def check_labels(
    train: Sequence[Labelled],
    others: Mapping[str, Sequence[Labelled]],
    where: str = "training split",
) -> list[str]:
    """Sorted training labels; a val/test label never seen in training is a :class:`DataError`,
    and so is a training split (folder ``where``) with fewer than two classes."""
    labels = sorted({u.label for u in train})
    if len(labels) < 2:
        raise DataError(
            f"{where}: the training split has {len(labels)} class(es) ({labels}); "
            "a classifier needs at least two"
        )
    known = set(labels)
    for name, utterances in others.items():
        for utt in utterances:
            if utt.label not in known:
                raise DataError(
                    f"{utt.path}: label {utt.label!r} of the {name} split never occurs in the "
                    f"training split"
                )
    return labels


def _reread(
    name: str, scan: SplitScan, cfg: Config, extractor: FeatureExtractor
) -> Iterator[np.ndarray]:
    """Pass 2 for val/test: read each file again, in the same order, and featurise it."""
    utterances = iter_dir(scan.directory, cfg.data.format, progress=f"features {name}")
    for info, utt in zip(scan.utterances, utterances, strict=False):
        if utt.path != info.path or utt.emg.shape[0] != info.samples:
            raise DataError(f"{utt.path}: changed while preprocessing; run it again")
        yield extractor(utt.emg, utt.path)


def _from_spill(
    scan: SplitScan, spill: Path, channels: int, extractor: FeatureExtractor
) -> Iterator[np.ndarray]:
    """Pass 2 for train: the filtered recordings come back from the spill file."""
    total = sum(u.samples for u in scan.utterances)
    filtered = np.memmap(spill, dtype=np.float32, mode="r", shape=(total, channels))
    offset = 0
    for info in progress_bar(scan.utterances, desc="features train", unit="utt", leave=False):
        yield extractor.features_from_filtered(np.asarray(filtered[offset : offset + info.samples]))
        offset += info.samples
    del filtered


def _pass_one(
    cfg: Config, local: Mapping[str, str], spill: Path
) -> tuple[dict[str, SplitScan], RunningStats, Fingerprint]:
    """Check and fingerprint every split; filter training recordings into stats and ``spill``."""
    channels = cfg.model.num_channels
    conditioner = FeatureExtractor.from_config(cfg, np.zeros(channels), np.ones(channels))
    stats = RunningStats(channels)
    fingerprint = Fingerprint()
    with open(spill, "wb") as fh:

        def keep(utt: Utterance) -> None:
            x = conditioner.filter(utt.emg)
            stats.add(x)
            x.tofile(fh)

        scans = {"train": scan_split("train", local["train"], cfg, fingerprint, keep)}
    for name in ("val", "test"):
        scans[name] = scan_split(name, local[name], cfg, fingerprint)
    return scans, stats, fingerprint


def run_preprocess(cfg: Config) -> Path:
    """Preprocess the configured train/val/test splits into ``data.processed_dir``; return it.

    Split folders and ``processed_dir`` may be ``s3://`` URIs: inputs are mirrored into
    ``storage.cache_dir`` first, and the finished data set is uploaded with its manifest last.
    """
    dirs = {"train": cfg.data.train_dir, "val": cfg.data.val_dir, "test": cfg.data.test_dir}
    local = {
        name: str(localize(uri, cfg.storage.cache_dir, cfg.storage)) for name, uri in dirs.items()
    }
    target = cfg.data.processed_dir
    if is_s3(target):
        out_dir = Path(cfg.storage.cache_dir) / "processed-upload" / Path(target[5:]).name
    else:
        out_dir = Path(target)
    # The spill file goes on the output's file system, into a folder that exists already (a
    # failed run creates no directories).
    spill_root = out_dir.resolve().parent
    while not spill_root.is_dir():
        spill_root = spill_root.parent

    channels = cfg.model.num_channels
    with tempfile.TemporaryDirectory(prefix=".ssr-spill-", dir=spill_root) as spill_dir:
        spill = Path(spill_dir) / "train_filtered.f32"
        scans, stats, fingerprint = _pass_one(cfg, local, spill)
        train = scans["train"].utterances
        check_repeats(fingerprint)
        texts: dict[str, list[str]] | None = None
        if cfg.task == "sentences":
            labels = output_labels()
            texts = {
                n: [normalise(u.label, u.path) for u in s.utterances] for n, s in scans.items()
            }
            label_ids = {}
        else:
            labels = check_labels(
                train, {n: scans[n].utterances for n in ("val", "test")}, str(dirs["train"])
            )
            label_ids = {label: i for i, label in enumerate(labels)}

        mean, std = stats.result()
        flat = np.flatnonzero(std <= 1e-12 * max(1.0, float(np.abs(mean).max())))
        if flat.size:
            raise DataError(
                f"{dirs['train']}: channel(s) {flat.tolist()} are constant after filtering in "
                f"the training split; cannot normalise"
            )
        extractor = FeatureExtractor.from_config(cfg, mean, std)

        streams = {}
        for name, scan in scans.items():
            features = (
                _from_spill(scan, spill, channels, extractor)
                if name == "train"
                else _reread(name, scan, cfg, extractor)
            )
            lengths = [extractor.num_frames(u.samples) for u in scan.utterances]
            if texts is not None:
                for u, n, text in zip(scan.utterances, lengths, texts[name], strict=True):
                    check_fits(text, labels, n, cfg.model.subsample, u.path)
            streams[name] = SplitStream(
                lengths=lengths,
                labels=[label_ids.get(u.label, 0) for u in scan.utterances],
                ids=[u.path for u in scan.utterances],
                shape=(channels, extractor.input_size),
                features=features,
                texts=None if texts is None else texts[name],
            )
        data = cfg.data.model_dump()
        manifest = extractor.to_manifest()
        manifest.update(
            {
                "labels": labels,
                "task": cfg.task,
                "preprocessing": {k: data[k] for k in PREPROCESSING_KEYS}
                | {"format": cfg.data.format},
                "fingerprint": fingerprint.hexdigest(),
                "created_by": f"ssr {ssr.__version__}",
                "sources": {name: str(dirs[name]) for name in SPLITS},
            }
        )
        extra = {}
        if cfg.task == "sentences" and cfg.decoding.lm_text:  # travels with the data set
            lines = read_lm_text(cfg.decoding.lm_text, cfg.storage)
            extra[LM_TEXT] = "".join(f"{line}\n" for line in lines)
            manifest["lm_text"] = {"source": cfg.decoding.lm_text, "lines": len(lines)}
        out = write_processed(out_dir, manifest, streams, extra)
    if is_s3(target):
        publish(out, target, cfg.storage)
    log.info(
        "preprocessed %s utterances into %s (fingerprint %s)",
        ", ".join(f"{n}={len(scans[n].utterances)}" for n in SPLITS),
        target,
        manifest["fingerprint"][:12],
    )
    return out
