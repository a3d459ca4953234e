"""``ssr preprocess``: shapes, normalisation, manifest, fingerprint, extractor parity, bad input,
and the streaming pieces (running statistics, utterance-by-utterance writes)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ssr.cli import main
from ssr.config import Config, load_config
from ssr.data.fingerprint import fingerprint_splits
from ssr.data.formats import read_dir, read_native, write_native
from ssr.data.preprocess import FeatureExtractor, RunningStats, load_split, run_preprocess
from ssr.data.processed import ProcessedSplit, SplitStream, read_manifest, write_processed
from ssr.data.synth import SynthOptions, generate
from ssr.errors import DataError

SMALL = SynthOptions(vocab=3, per_word=4, sessions=4, train_sessions=2, seed=3,
                     min_duration=0.5, max_duration=0.8)  # fmt: skip
FAST = ["data.window_size=64", "data.hop_length=32", "model.input_size=8"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "d"
    generate(out, SMALL)
    return out


def _overrides(root: Path, processed: Path) -> list[str]:
    return [
        f"data.train_dir={root / 'train'}",
        f"data.val_dir={root / 'val'}",
        f"data.test_dir={root / 'test'}",
        f"data.processed_dir={processed}",
        *FAST,
    ]


def _cfg(root: Path, processed: Path) -> Config:
    return load_config(None, _overrides(root, processed))


@pytest.fixture(scope="module")
def processed(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    cfg = _cfg(raw, tmp_path_factory.mktemp("proc") / "p")
    return cfg, run_preprocess(cfg)


def test_manifest_and_shapes(processed: tuple[Config, Path]) -> None:
    cfg, out = processed
    manifest = read_manifest(out)
    for key in ("labels", "num_channels", "input_size", "sampling_rate", "preprocessing",
                "normalization", "fingerprint", "created_by"):  # fmt: skip
        assert key in manifest, key
    assert manifest["labels"] == sorted(["yes", "no", "up"])
    assert manifest["created_by"].startswith("ssr ")
    assert manifest["preprocessing"]["notch_q"] == cfg.data.notch_q
    assert len(manifest["normalization"]["std"]) == 8
    ds = ProcessedSplit(out, "val")
    utts = load_split(cfg.data.val_dir, cfg)
    for i, utt in enumerate(utts):
        x, label = ds[i]
        assert x.shape == (1 + (utt.emg.shape[0] - 64) // 32, 8, 8)
        assert manifest["labels"][label] == utt.label


def test_train_signal_normalised(processed: tuple[Config, Path]) -> None:
    cfg, out = processed
    ex = FeatureExtractor.from_manifest(read_manifest(out))
    utts = load_split(cfg.data.train_dir, cfg)
    x = np.concatenate([(ex.filter(u.emg) - ex.mean) / ex.std for u in utts])
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-3)


def test_extractor_reproduces_stored_features(processed: tuple[Config, Path]) -> None:
    cfg, out = processed
    ex = FeatureExtractor.from_manifest(read_manifest(out))
    assert ex.min_samples == 64
    ds = ProcessedSplit(out, "test")
    utt = read_native(ds.ids[1])
    np.testing.assert_array_equal(ex(utt.emg), ds[1][0].numpy())
    with pytest.raises(DataError, match="shorter than one window"):
        ex(utt.emg[:63])


def test_fingerprint_stable_and_sensitive(raw: Path, processed: tuple[Config, Path],
                                          tmp_path: Path) -> None:  # fmt: skip
    _, out = processed
    first = read_manifest(out)["fingerprint"]
    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    again = read_manifest(run_preprocess(_cfg(copy, tmp_path / "p1")))["fingerprint"]
    assert again == first
    victim = sorted((copy / "val").rglob("*.npz"))[0]
    utt = read_native(victim)
    utt.emg[10, 3] += 1.0
    write_native(victim, utt.emg, utt.label, utt.sampling_rate)
    changed = read_manifest(run_preprocess(_cfg(copy, tmp_path / "p2")))["fingerprint"]
    assert changed != first


def _first(root: Path, split: str = "train") -> Path:
    return sorted((root / split).rglob("*.npz"))[0]


def _rewrite(root: Path, fn: Callable, split: str = "train") -> Path:
    path = _first(root, split)
    utt = read_native(path)
    emg, label, rate = fn(utt.emg.copy(), utt.label, utt.sampling_rate)
    path.unlink()
    write_native(path, emg, label, rate)
    return path


def _wrong_channels(root: Path) -> Path:
    return _rewrite(root, lambda e, lab, r: (e[:, :7], lab, r))


def _wrong_rate(root: Path) -> Path:
    return _rewrite(root, lambda e, lab, r: (e, lab, 500.0), "test")


def _nan(root: Path) -> Path:
    def fn(e: np.ndarray, lab: str, r: float) -> tuple:
        e[5, 2] = np.nan
        return e, lab, r

    return _rewrite(root, fn, "val")


def _too_short(root: Path) -> Path:
    return _rewrite(root, lambda e, lab, r: (e[:40], lab, r))


def _unknown_label(root: Path) -> Path:
    return _rewrite(root, lambda e, lab, r: (e, "banana", r), "val")


def _truncated_npz(root: Path) -> Path:
    path = _first(root, "test")
    path.write_bytes(path.read_bytes()[:300])
    return path


def _truncated_npy(root: Path) -> Path:
    path = _first(root)
    path.unlink()
    emg = np.zeros((500, 8), np.float32)
    npy = path.with_name("9_emg.npy")
    np.save(npy, emg)
    npy.write_bytes(npy.read_bytes()[:1000])
    (path.with_name("9_info.json")).write_text(json.dumps({"sentence_index": 1, "text": "no"}))
    shutil.rmtree(root / "train" / "session01")  # keep the train split Gaddy-only
    for other in (root / "train" / "session00").glob("*.npz"):
        other.unlink()
    return npy


def _raw_npz(root: Path, split: str = "train", **arrays: np.ndarray) -> Path:
    """Rewrite the first file of ``split`` with some arrays replaced, as np.savez writes them."""
    path = _first(root, split)
    with np.load(path) as npz:
        content = {k: npz[k] for k in npz.files}
    content.update(arrays)
    path.unlink()
    np.savez(path, **content)
    return path


def _complex(root: Path) -> Path:
    emg = read_native(_first(root)).emg
    return _raw_npz(root, emg=emg.astype(np.complex64) + 1j)


def _bytes_label(root: Path) -> Path:
    return _raw_npz(root, label=np.array(b"no"))


def _nan_rate(root: Path) -> Path:
    return _raw_npz(root, "val", sampling_rate=np.array(np.nan))


def _text_rate(root: Path) -> Path:
    return _raw_npz(root, "val", sampling_rate=np.array("1000"))


def _dead_electrode(root: Path) -> Path:
    def fn(e: np.ndarray, lab: str, r: float) -> tuple:
        e[:, 3] = 0.0
        return e, lab, r

    return _rewrite(root, fn)


def _all_zero(root: Path) -> Path:
    return _rewrite(root, lambda e, lab, r: (np.zeros_like(e), lab, r), "test")


def _test_copied_into_train(root: Path) -> Path:
    source = _first(root, "test")
    shutil.copy(source, root / "train" / "copied.npz")
    return source


def _one_class(root: Path) -> Path:
    for path in sorted((root / "train").rglob("*.npz")):
        utt = read_native(path)
        if utt.label != "yes":
            path.unlink()
    for split in ("val", "test"):
        for path in sorted((root / split).rglob("*.npz")):
            if read_native(path).label != "yes":
                path.unlink()
    return root / "train"


def _empty_split(root: Path) -> Path:
    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    return root / "val"


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (_wrong_channels, "7 channels"),
        (_wrong_rate, "sampling rate 500"),
        (_nan, "NaN"),
        (_too_short, "shorter than one window"),
        (_unknown_label, "'banana'"),
        (_truncated_npz, "truncated"),
        (_truncated_npy, "truncated"),
        (_empty_split, "no utterances"),
        (_complex, "dtype complex64"),
        (_bytes_label, "'label' must be a unicode string"),
        (_nan_rate, "finite positive number, got nan"),
        (_text_rate, "'sampling_rate' must be a real number"),
        (_dead_electrode, "channel(s) [3] are flat"),
        (_all_zero, "every channel is flat"),
        (_test_copied_into_train, "the same recording is in more than one split"),
        (_one_class, "the training split has 1 class(es) (['yes'])"),
    ],
)
def test_bad_input_exits_2_naming_file_and_keeps_output(
    corrupt: Callable[[Path], Path], problem: str, raw: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    bad = corrupt(root)
    fresh = tmp_path / "new" / "fresh"
    assert main(["preprocess", *_overrides(root, fresh)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and problem in err, err
    assert not (tmp_path / "new").exists()  # not even the parent folder
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "manifest.json").write_text("{}")
    assert main(["preprocess", *_overrides(root, existing)]) == 2
    assert [p.name for p in existing.iterdir()] == ["manifest.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_config_key_exits_2(raw: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "p"
    assert main(["preprocess", *_overrides(raw, out), "data.window=3"]) == 2
    assert "data.window: unknown key" in capsys.readouterr().err
    assert not out.exists()


def test_cli_gaddy_format_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path / "g", SynthOptions(**{**SMALL.__dict__, "fmt": "gaddy"}))
    out = tmp_path / "p"
    assert main(["preprocess", *_overrides(tmp_path / "g", out), "data.format=gaddy"]) == 0
    assert "processed data set" in capsys.readouterr().out
    assert read_manifest(out)["splits"]["train"]["utterances"] == 6


def test_running_stats_match_one_pass_over_everything() -> None:
    rng = np.random.default_rng(0)
    chunks = [
        (rng.standard_normal((n, 8)) * 50 + 1e3).astype(np.float32) for n in (1, 700, 3, 2500)
    ]
    stats = RunningStats(8)
    for x in chunks:
        stats.add(x)
    stats.add(np.zeros((0, 8), np.float32))  # an empty chunk changes nothing
    mean, std = stats.result()
    every = np.concatenate(chunks).astype(np.float64)
    np.testing.assert_allclose(mean, every.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, every.std(axis=0), rtol=1e-9)
    with pytest.raises(ValueError, match="no samples"):
        RunningStats(8).result()


def test_fingerprint_ignores_reading_order(raw: Path) -> None:
    utts = read_dir(raw / "val")
    roots = {"val": raw / "val"}
    forward = fingerprint_splits({"val": utts}, roots)
    assert fingerprint_splits({"val": utts[::-1]}, roots) == forward
    assert fingerprint_splits({"val": utts[1:]}, roots) != forward
    assert fingerprint_splits({"val": utts, "test": []}, {**roots, "test": raw}) != forward


def test_streamed_split_with_wrong_shape_leaves_no_output(tmp_path: Path) -> None:
    good, bad = np.zeros((3, 8, 4), np.float32), np.zeros((2, 8, 4), np.float32)
    stream = SplitStream([3, 3], [0, 1], ["a.npz", "b.npz"], (8, 4), iter([good, bad]))
    with pytest.raises(DataError, match=r"b.npz: features \(2, 8, 4\), expected \(3, 8, 4\)"):
        write_processed(tmp_path / "out", {}, {"train": stream})
    assert list(tmp_path.iterdir()) == []
    short = SplitStream([3, 3], [0, 1], ["a.npz", "b.npz"], (8, 4), iter([good]))
    with pytest.raises(DataError, match="1 utterances produced, 2 expected"):
        write_processed(tmp_path / "out", {}, {"train": short})
    stream = SplitStream([3, 2], [0, 1], ["a.npz", "b.npz"], (8, 4), iter([good, bad]))
    out = write_processed(tmp_path / "out", {"labels": ["x", "y"]}, {"train": stream})
    assert np.load(out / "train_index.npy").tolist() == [[0, 3, 0], [3, 2, 1]]
    assert np.load(out / "train_features.npy").shape == (5, 8, 4)


def test_duplicate_in_train_is_a_warning(
    raw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "raw"
    shutil.copytree(raw, root)
    source = _first(root)
    shutil.copy(source, root / "train" / "again.npz")
    with caplog.at_level("WARNING", logger="ssr.data.preprocess"):
        run_preprocess(_cfg(root, tmp_path / "p"))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 duplicate recording(s) within a split" in warning and str(source) in warning


def test_feature_settings_change_the_feature_hash_not_the_fingerprint(
    raw: Path, processed: tuple[Config, Path], tmp_path: Path
) -> None:
    cfg, out = processed
    first = read_manifest(out)
    other = _cfg(raw, tmp_path / "p50").model_copy(deep=True)
    other.data.powerline_freq = 50.0
    other.data.bandpass_high = 200.0
    second = read_manifest(run_preprocess(other))
    assert second["fingerprint"] == first["fingerprint"]
    assert second["feature_hash"] != first["feature_hash"]
    assert len(first["feature_hash"]) == 64
