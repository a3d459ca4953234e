"""Raw EMG recording formats: the native ``.npz`` per utterance and the Gaddy & Klein layout.

Native (this project): one ``.npz`` per utterance holding ``emg`` float32 (time, channels),
``label`` (0-d str) and ``sampling_rate`` (0-d float). A split directory holds such files at
any depth.

Gaddy & Klein (silent speech data set): one folder per session with ``{i}_emg.npy`` (time, 8)
at 1000 Hz and ``{i}_info.json`` beside it whose ``text`` is the label. Entries with
``sentence_index`` -1 are silence and skipped; audio and button files are ignored.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ssr.errors import DataError
from ssr.fsutil import atomic_path
from ssr.progress import progress_bar

Format = Literal["native", "gaddy"]
GADDY_SAMPLING_RATE = 1000.0
_GADDY_INFO = re.compile(r"^(\d+)_info\.json$")
# Fixed zip timestamp so the same arrays always give byte-identical files.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class Utterance:
    """One raw recording: ``emg`` (time, channels), its word ``label`` and where it came from."""

    path: str
    emg: np.ndarray
    label: str
    sampling_rate: float

    @property
    def seconds(self) -> float:
        return float(self.emg.shape[0] / self.sampling_rate)


def write_native(
    path: str | os.PathLike[str], emg: np.ndarray, label: str, sampling_rate: float
) -> Path:
    """Write one utterance as a native ``.npz`` atomically (byte-identical for equal input)."""
    emg = np.ascontiguousarray(emg, dtype=np.float32)
    if emg.ndim != 2:
        raise ValueError(f"emg must be 2-D (time, channels), got shape {emg.shape}")
    arrays = {
        "emg": emg,
        "label": np.array(str(label)),
        "sampling_rate": np.array(float(sampling_rate), dtype=np.float64),
    }
    target = Path(path)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr, allow_pickle=False)
    return target


def _scalar(value: np.ndarray, kind: type, path: Path, key: str) -> Any:
    """The 0-d array ``value`` as a ``str`` (unicode dtype only) or a finite positive ``float``
    (integer or real dtype only); anything else is a :class:`DataError`, never converted."""
    if value.ndim != 0:
        raise DataError(f"{path}: {key!r} must be a 0-d array, got shape {value.shape}")
    if kind is str:
        if value.dtype.kind != "U":
            raise DataError(f"{path}: {key!r} must be a unicode string, got dtype {value.dtype}")
        return str(value.item())
    if value.dtype.kind not in "iuf":
        raise DataError(f"{path}: {key!r} must be a real number, got dtype {value.dtype}")
    return check_rate(float(value.item()), path, key)


def check_rate(value: Any, path: str | os.PathLike[str], key: str = "sampling_rate") -> float:
    """``value`` as a finite positive float; text, null, booleans, NaN or <= 0 are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{path}: {key!r} must be a number, got {value!r}")
    rate = float(value)
    if not np.isfinite(rate) or rate <= 0:
        raise DataError(f"{path}: {key!r} must be a finite positive number, got {rate!r}")
    return rate


def read_native(path: str | os.PathLike[str]) -> Utterance:
    """Read a native ``.npz`` utterance; unreadable or incomplete files raise :class:`DataError`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = {"emg", "label", "sampling_rate"} - keys
            if missing:
                raise DataError(f"{path}: missing array(s) {sorted(missing)} (label is required)")
            emg = npz["emg"]
            label_arr = npz["label"]
            rate_arr = npz["sampling_rate"]
    except DataError:
        raise
    except Exception as exc:  # zip, header or truncated-data errors all mean "unreadable"
        raise DataError(
            f"{path}: unreadable or truncated .npz ({type(exc).__name__}: {exc})"
        ) from None
    label = _scalar(label_arr, str, path, "label").strip()
    if not label:
        raise DataError(f"{path}: empty label")
    rate = _scalar(rate_arr, float, path, "sampling_rate")
    return Utterance(str(path), emg, label, rate)


def _progress(items: list[Path], desc: str | None) -> Any:
    return progress_bar(items, desc=desc, unit="file", disable=desc is None, leave=False)


def read_native_dir(root: str | os.PathLike[str], progress: str | None = None) -> list[Utterance]:
    """All ``*.npz`` utterances under ``root`` (recursively), in sorted path order.

    ``progress`` is the label of a tqdm progress bar (none when None).
    """
    return list(iter_dir(root, "native", progress))


def write_gaddy(
    session_dir: str | os.PathLike[str],
    index: int,
    emg: np.ndarray,
    label: str,
    sentence_index: int = 0,
    extra_info: dict[str, Any] | None = None,
) -> Path:
    """Write ``{index}_emg.npy`` and ``{index}_info.json`` in a Gaddy-layout session folder.

    ``sentence_index=-1`` marks a silence entry (readers skip it). Returns the ``.npy`` path.
    """
    session = Path(session_dir)
    emg_path = session / f"{index}_emg.npy"
    info = {"book": "", "sentence_index": int(sentence_index), "text": str(label)}
    info.update(extra_info or {})
    with atomic_path(emg_path) as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array(fh, np.ascontiguousarray(emg), allow_pickle=False)
    with atomic_path(session / f"{index}_info.json") as tmp:
        tmp.write_text(json.dumps(info, sort_keys=True) + "\n")
    return emg_path


def _read_gaddy_entry(info_path: Path) -> Utterance | None:
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{info_path}: unreadable info JSON ({exc})") from None
    if not isinstance(info, dict):
        raise DataError(f"{info_path}: info JSON must be an object")
    if info.get("sentence_index") == -1:
        return None
    label = info.get("text")
    if not isinstance(label, str) or not label.strip():
        raise DataError(f"{info_path}: missing label (no non-empty 'text' field)")
    index = _GADDY_INFO.match(info_path.name)[1]  # type: ignore[index]
    emg_path = info_path.with_name(f"{index}_emg.npy")
    if not emg_path.is_file():
        raise DataError(f"{emg_path}: missing EMG file for {info_path.name}")
    try:
        emg = np.load(emg_path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"{emg_path}: unreadable or truncated .npy ({type(exc).__name__}: {exc})"
        ) from None
    rate = check_rate(info.get("sampling_rate", GADDY_SAMPLING_RATE), info_path)
    return Utterance(str(emg_path), emg, label.strip(), rate)


def _gaddy_sort_key(path: Path) -> tuple[str, int]:
    return (str(path.parent), int(_GADDY_INFO.match(path.name)[1]))  # type: ignore[index]


def gaddy_info_files(root: str | os.PathLike[str]) -> list[Path]:
    """The ``{i}_info.json`` files under ``root``, by folder then numeric index."""
    found = [p for p in Path(root).rglob("*_info.json") if _GADDY_INFO.match(p.name)]
    return sorted(found, key=_gaddy_sort_key)


def read_gaddy_dir(root: str | os.PathLike[str], progress: str | None = None) -> list[Utterance]:
    """All non-silence utterances of a Gaddy-layout tree (one folder per session)."""
    return list(iter_dir(root, "gaddy", progress))


def detect_format(root: str | os.PathLike[str]) -> Format:
    """``gaddy`` when ``root`` holds ``{i}_info.json`` files, ``native`` when it holds ``.npz``."""
    root = Path(root)
    has_gaddy = any(_GADDY_INFO.match(p.name) for p in root.rglob("*_info.json"))
    has_native = next(root.rglob("*.npz"), None) is not None
    if has_gaddy and has_native:
        raise DataError(
            f"{root}: holds both .npz files and Gaddy *_info.json files; set data.format"
        )
    if has_gaddy:
        return "gaddy"
    if has_native:
        return "native"
    raise DataError(f"{root}: no utterances found (no .npz files, no Gaddy *_info.json files)")


def iter_dir(
    root: str | os.PathLike[str], fmt: str = "auto", progress: str | None = None
) -> Iterator[Utterance]:
    """Yield the utterances under ``root`` one at a time, in a fixed order.

    ``fmt`` is ``auto``, ``native`` or ``gaddy``; ``progress`` labels a tqdm bar. Only one
    recording is in memory at a time, so a split of any size can be streamed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: split directory not found")
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt == "native":
        for path in _progress(sorted(root.rglob("*.npz")), progress):
            yield read_native(path)
    elif fmt == "gaddy":
        for info_path in _progress(gaddy_info_files(root), progress):
            utt = _read_gaddy_entry(info_path)
            if utt is not None:
                yield utt
    else:
        raise DataError(f"{root}: unknown data format {fmt!r} (expected auto, native or gaddy)")


def read_dir(
    root: str | os.PathLike[str], fmt: str = "auto", progress: str | None = None
) -> list[Utterance]:
    """Read every utterance under ``root`` in format ``fmt`` (``auto``, ``native`` or ``gaddy``)."""
    return list(iter_dir(root, fmt, progress))
