"""Synthetic sEMG: spectrum, hum, session effects, determinism, held-out sessions, formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from ssr.data.formats import read_dir
from ssr.data.synth import SynthOptions, generate
from ssr.errors import ConfigError, DataError

SMALL = {"vocab": 3, "per_word": 8, "sessions": 4, "train_sessions": 2, "min_duration": 0.6,
         "max_duration": 0.9}  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "d"
    return out, generate(out, SynthOptions(seed=7, powerline_freq=50.0, **SMALL))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _psd(root: Path) -> tuple[np.ndarray, np.ndarray]:
    utts = read_dir(root / "train")
    psds = []
    for utt in utts:
        freqs, p = signal.welch(utt.emg, fs=utt.sampling_rate, nperseg=500, axis=0)
        psds.append(p.mean(axis=1))
    return freqs, np.mean(psds, axis=0)


def test_power_concentrated_in_semg_band_after_removing_hum(synth: tuple[Path, dict]) -> None:
    freqs, psd = _psd(synth[0])
    hum = np.zeros_like(freqs, dtype=bool)
    for k in (1, 2, 3):
        hum |= np.abs(freqs - 50.0 * k) <= 3
    band = (freqs >= 20) & (freqs <= 450)
    share = psd[band & ~hum].sum() / psd[~hum].sum()
    assert share > 0.8, share


def test_hum_peak_at_configured_powerline_frequency(synth: tuple[Path, dict]) -> None:
    freqs, psd = _psd(synth[0])
    peak = psd[np.argmin(np.abs(freqs - 50.0))]
    around = psd[(np.abs(freqs - 50.0) > 4) & (np.abs(freqs - 50.0) < 20)]
    assert peak > 5 * np.median(around)
    assert psd[np.argmin(np.abs(freqs - 60.0))] < peak / 5  # not at the other mains frequency


def test_sessions_differ_in_per_channel_gain(synth: tuple[Path, dict]) -> None:
    out, summary = synth
    sos = signal.butter(4, [20, 450], "bandpass", fs=1000, output="sos")
    profiles = []
    for session in sorted((out / "train").iterdir()):
        utts = read_dir(session)
        rms = np.mean([signal.sosfiltfilt(sos, u.emg, axis=0).std(axis=0) for u in utts], axis=0)
        profiles.append(np.log(rms) - np.log(rms).mean())
    assert len(profiles) == 2
    assert np.abs(profiles[0] - profiles[1]).max() > 0.1
    gains = [summary["sessions"][str(s)]["gains"] for s in range(4)]
    assert len({tuple(g) for g in gains}) == 4


def test_held_out_sessions_are_disjoint_from_training(synth: tuple[Path, dict]) -> None:
    out, summary = synth
    splits = summary["splits"]
    train = set(splits["train"]["sessions"])
    assert train and not train & set(splits["val"]["sessions"])
    assert not train & set(splits["test"]["sessions"])
    assert not set(splits["val"]["sessions"]) & set(splits["test"]["sessions"])
    on_disk = {name: {p.name for p in (out / name).iterdir()} for name in splits}
    assert not on_disk["train"] & (on_disk["val"] | on_disk["test"])
    labels = {name: {u.label for u in read_dir(out / name)} for name in splits}
    assert labels["val"] == labels["train"] == labels["test"] == set(summary["vocabulary"])
    n = sum(s["utterances"] for s in splits.values())
    assert n == 3 * 8


def test_same_seed_same_bytes_other_seed_differs(synth: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = synth
    generate(tmp_path / "same", SynthOptions(seed=7, powerline_freq=50.0, **SMALL))
    generate(tmp_path / "other", SynthOptions(seed=8, powerline_freq=50.0, **SMALL))
    first, same, other = _files(out), _files(tmp_path / "same"), _files(tmp_path / "other")
    arrays = [k for k in first if k.endswith(".npz")]
    assert arrays and all(first[k] == same[k] for k in arrays)
    assert sum(first[k] != other.get(k) for k in arrays) == len(arrays)


def test_gaddy_output_is_read_by_loader(tmp_path: Path) -> None:
    summary = generate(tmp_path / "g", SynthOptions(fmt="gaddy", seed=1, **SMALL))
    train = tmp_path / "g" / "train"
    assert next(train.rglob("0_info.json"))  # the silence entry of each session
    utts = read_dir(train)
    assert len(utts) == summary["splits"]["train"]["utterances"]
    assert all(u.emg.shape[1] == 8 and u.label for u in utts)


def test_bad_options_and_foreign_out_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="held-out"):
        generate(tmp_path / "x", SynthOptions(sessions=3, train_sessions=2))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        generate(tmp_path / "busy", SynthOptions(**SMALL))
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"


def test_cli_synth_prints_splits_and_next_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssr.cli import main

    out = tmp_path / "d"
    argv = ["data", "synth", "--out", str(out), "--vocab", "3", "--per-word", "4",
            "--sessions", "4", "--train-sessions", "2", "--duration", "0.5", "0.7"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"data.train_dir={out / 'train'}" in printed
    assert "ssr preprocess --config configs/training_config.yaml" in printed
    assert main(["data", "check", f"data.train_dir={out / 'train'}",
                 f"data.val_dir={out / 'val'}", f"data.test_dir={out / 'test'}"]) == 0  # fmt: skip
    assert "ok: 3 labels" in capsys.readouterr().out
    assert main(["data", "synth", "--out", str(out), "--sessions", "2"]) == 2
    assert "held-out" in capsys.readouterr().err


def test_part_of_the_vocabulary_is_reordered_gestures(tmp_path: Path) -> None:
    from ssr.data.synth_model import make_world

    words = make_world(SynthOptions(vocab=10, permuted=0.4)).words
    seqs = list(words.values())
    assert len({tuple(s) for s in seqs}) == 10  # every word distinct
    reordered = [
        w for i, (w, s) in enumerate(words.items())
        if any(sorted(s) == sorted(t) and s != t for t in seqs[:i])
    ]  # fmt: skip
    assert len(reordered) >= 3  # 4 asked for; a palindrome cannot be reversed
    with pytest.raises(ConfigError, match="permuted"):
        SynthOptions(permuted=1.5).validate()


def test_test_sessions_option_splits_held_out_sessions() -> None:
    from ssr.data.synth import split_sessions

    default = split_sessions(SynthOptions())  # 2 validation sessions where the data allows
    assert default == {"train": [0, 1, 2, 3, 4], "val": [5, 6], "test": [7, 8]}
    assert split_sessions(SynthOptions(sessions=4, train_sessions=2))["val"] == [2]
    assert split_sessions(SynthOptions(sessions=8, train_sessions=3, val_sessions=3)) == {
        "train": [0, 1, 2], "val": [3, 4, 5], "test": [6, 7]
    }  # fmt: skip
    four = split_sessions(SynthOptions(sessions=12, train_sessions=6, test_sessions=4))
    assert four == {"train": list(range(6)), "val": [6, 7], "test": [8, 9, 10, 11]}
    with pytest.raises(ConfigError, match="validation"):
        SynthOptions(sessions=6, train_sessions=3, test_sessions=3).validate()


def test_profiles_change_how_sessions_differ() -> None:
    from ssr.data.synth_model import make_session, make_world, utterance

    def sessions(profile: str) -> list:  # -> list[Session]
        opts = SynthOptions(seed=4, profile=profile, sessions=12, train_sessions=6)
        world = make_world(opts)
        return [make_session(opts, world, s) for s in range(opts.sessions)]

    default, displaced, speaker = sessions("default"), sessions("displaced"), sessions("speaker")
    assert all(abs(s.shift) <= 0.75 and s.rate == 1.0 and s.overlap == 0.7 for s in default)
    assert any(abs(s.shift) > 0.75 for s in displaced)  # a whole electrode off
    assert np.std([np.log(s.gains) for s in displaced]) > 1.5 * np.std(
        [np.log(s.gains) for s in default]
    )
    assert min(s.crosstalk for s in displaced) >= 0.15 > max(s.crosstalk for s in speaker)
    assert len({round(s.rate, 6) for s in speaker}) == len(speaker)  # a speaking rate each
    assert all(0.5 <= s.overlap <= 0.9 for s in speaker)
    assert all(s.muscle_sos is not None for s in speaker)  # spectral peaks moved per session
    # the same seed draws the same words and default sessions, whatever the profile adds
    opts = SynthOptions(seed=4, sessions=12, train_sessions=6)
    assert (
        make_world(opts).words
        == make_world(SynthOptions(**{**opts.__dict__, "profile": "displaced"})).words
    )
    emg = utterance(opts, make_world(opts), default[0], 0, 0, "yes")
    assert emg.dtype == np.float32 and np.isfinite(emg).all()


def test_profile_is_recorded_and_an_unknown_one_refused(tmp_path: Path) -> None:
    from ssr.cli import main

    summary = generate(tmp_path / "d", SynthOptions(profile="speaker", **SMALL))
    assert summary["options"]["profile"] == "speaker"
    assert {"rate", "overlap"} <= set(summary["sessions"]["0"])
    with pytest.raises(ConfigError, match="profile must be one of default, displaced"):
        SynthOptions(profile="nope").validate()
    argv = ["data", "synth", "--out", str(tmp_path / "e"), "--vocab", "3", "--per-word", "5",
            "--sessions", "5", "--train-sessions", "2", "--val-sessions", "2",
            "--profile", "displaced", "--duration", "0.5", "0.6"]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "e" / "val").iterdir()) == [
        "session02", "session03"
    ]  # fmt: skip
