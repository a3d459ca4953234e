"""Native and Gaddy formats: round trips, silence and extra files, bad files named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ssr.data.formats import (
    detect_format,
    read_dir,
    read_gaddy_dir,
    read_native,
    write_gaddy,
    write_native,
)
from ssr.errors import DataError


def _emg(seed: int, n: int = 300, c: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, c)).astype(np.float32)


def test_native_round_trip_and_deterministic_bytes(tmp_path: Path) -> None:
    emg = _emg(0)
    path = write_native(tmp_path / "a" / "u.npz", emg, "hello", 1000.0)
    utt = read_native(path)
    assert utt.label == "hello" and utt.sampling_rate == 1000.0
    assert utt.emg.dtype == np.float32
    np.testing.assert_array_equal(utt.emg, emg)
    again = write_native(tmp_path / "b.npz", emg, "hello", 1000.0)
    assert path.read_bytes() == again.read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))


def test_native_dir_is_recursive_and_sorted(tmp_path: Path) -> None:
    write_native(tmp_path / "s2" / "x.npz", _emg(1), "b", 1000)
    write_native(tmp_path / "s1" / "deep" / "y.npz", _emg(2), "a", 1000)
    assert detect_format(tmp_path) == "native"
    utts = read_dir(tmp_path)
    assert [u.label for u in utts] == ["a", "b"]


def test_gaddy_round_trip_skips_silence_and_ignores_extra_files(tmp_path: Path) -> None:
    session = tmp_path / "5-4"
    write_gaddy(session, 0, _emg(0), "", sentence_index=-1)
    write_gaddy(session, 1, _emg(1), "the cat", sentence_index=12)
    write_gaddy(session, 10, _emg(10), "a dog", sentence_index=13)
    write_gaddy(tmp_path / "5-5", 2, _emg(2), "the cat", sentence_index=3)
    (session / "1_audio.flac").write_bytes(b"fLaC not really")
    np.save(session / "1_button.npy", np.zeros(10))
    (session / "notes.txt").write_text("ignored")
    assert detect_format(tmp_path) == "gaddy"
    utts = read_gaddy_dir(tmp_path)
    assert [(Path(u.path).name, u.label) for u in utts] == [
        ("1_emg.npy", "the cat"),
        ("10_emg.npy", "a dog"),
        ("2_emg.npy", "the cat"),
    ]
    np.testing.assert_array_equal(utts[1].emg, _emg(10))
    assert all(u.sampling_rate == 1000.0 for u in utts)


def test_gaddy_missing_label_names_file(tmp_path: Path) -> None:
    write_gaddy(tmp_path, 3, _emg(0), "", sentence_index=4)
    with pytest.raises(DataError, match=r"3_info\.json: missing label"):
        read_gaddy_dir(tmp_path)


def test_gaddy_missing_emg_names_file(tmp_path: Path) -> None:
    (tmp_path / "7_info.json").write_text(json.dumps({"sentence_index": 1, "text": "x"}))
    with pytest.raises(DataError, match=r"7_emg\.npy: missing EMG"):
        read_gaddy_dir(tmp_path)


def test_truncated_files_raise_data_error_naming_them(tmp_path: Path) -> None:
    npz = write_native(tmp_path / "n" / "u.npz", _emg(0), "w", 1000)
    npz.write_bytes(npz.read_bytes()[:500])
    with pytest.raises(DataError, match=r"u\.npz: unreadable or truncated"):
        read_native(npz)
    npy = write_gaddy(tmp_path / "g", 1, _emg(0), "w")
    npy.write_bytes(npy.read_bytes()[:400])
    with pytest.raises(DataError, match=r"1_emg\.npy: unreadable or truncated"):
        read_gaddy_dir(tmp_path / "g")


def test_native_missing_label(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    np.savez(path, emg=_emg(0), sampling_rate=np.array(1000.0))
    with pytest.raises(DataError, match=r"u\.npz: missing array\(s\) \['label'\]"):
        read_native(path)


def test_empty_or_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no utterances"):
        read_dir(tmp_path)
    with pytest.raises(DataError, match="split directory not found"):
        read_dir(tmp_path / "nope")


def test_atomic_outputs_get_the_usual_modes(tmp_path):
    """Temp-then-rename must not leave 0600/0700 modes (containers run as another user)."""
    import os
    import stat

    from ssr.fsutil import atomic_dir, atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("rate", "problem"),
    [
        ("1000", "must be a number, got '1000'"),
        (None, "must be a number, got None"),
        (True, "must be a number, got True"),
        (-5, "finite positive number, got -5.0"),
    ],
)
def test_gaddy_sampling_rate_is_checked(tmp_path: Path, rate: object, problem: str) -> None:
    write_gaddy(tmp_path / "s1", 0, _emg(0), "yes", extra_info={"sampling_rate": rate})
    with pytest.raises(DataError, match=problem) as info:
        read_gaddy_dir(tmp_path)
    assert str(tmp_path / "s1" / "0_info.json") in str(info.value)
