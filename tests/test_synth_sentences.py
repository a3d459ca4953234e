"""Synthetic sentences: determinism, transcripts, open vocabulary, LM text, gestures, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssr.data.formats import read_dir
from ssr.data.synth_sentences import (
    SentenceOptions,
    generate_sentences,
    gesture_classes,
    letter_durations,
    sentence_utterance,
)
from ssr.data.synth_text import TEMPLATES, Grammar, load_word_list
from ssr.errors import ConfigError, DataError
from ssr.sentences.units import normalise

SMALL = {"sentences": 10, "sessions": 4, "train_sessions": 2, "lm_sentences": 200,
         "unseen_words": 0.2}  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sentences") / "d"
    return out, generate_sentences(out, SentenceOptions(seed=3, **SMALL))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _texts(root: Path, split: str) -> list[str]:
    return [u.label for u in read_dir(root / split)]


def test_same_seed_same_bytes_other_seed_differs(synth: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = synth
    generate_sentences(tmp_path / "same", SentenceOptions(seed=3, **SMALL))
    generate_sentences(tmp_path / "other", SentenceOptions(seed=4, **SMALL))
    first, same, other = _files(out), _files(tmp_path / "same"), _files(tmp_path / "other")
    data = [k for k in first if k.endswith((".npz", ".txt"))]
    assert "lm_text.txt" in data and all(first[k] == same[k] for k in data)
    assert sum(first[k] != other.get(k) for k in data) == len(data)


def test_transcripts_are_normalised_sentences_of_the_word_list(synth: tuple[Path, dict]) -> None:
    out, summary = synth
    words = set(load_word_list().words)
    texts = [t for split in ("train", "val", "test") for t in _texts(out, split)]
    assert len(texts) == 40 == sum(s["utterances"] for s in summary["splits"].values())
    for text in texts:
        assert normalise(text, "test") == text
        assert 3 <= len(text.split()) <= 6 and set(text.split()) <= words
    assert len(set(texts)) == len(texts)  # no sentence twice, in particular not train and test
    utts = read_dir(out / "train")
    seconds = [u.emg.shape[0] / u.sampling_rate for u in utts]
    assert 1.2 < np.mean(seconds) < 4.5 and all(u.emg.shape[1] == 8 for u in utts)


def test_open_vocabulary(synth: tuple[Path, dict]) -> None:
    out, summary = synth
    held = set(summary["held_out_words"])
    assert held
    train_words = {w for t in _texts(out, "train") for w in t.split()}
    assert not train_words & held
    for split in ("val", "test"):
        unseen = [bool(set(t.split()) & held) for t in _texts(out, split)]
        assert sum(unseen) == 3 == summary["splits"][split]["with_unseen_words"]  # 30 % of 10
    lm = (out / "lm_text.txt").read_text().splitlines()
    assert summary["lm_text"] == str(out / "lm_text.txt")
    assert held <= {w for line in lm for w in line.split()}
    assert set(load_word_list().words) <= set(lm)  # the word list, one word per line
    assert not set(lm) & set(_texts(out, "val") + _texts(out, "test"))
    assert len(lm) == 200 + len(load_word_list().words)


def test_grammar_follows_templates() -> None:
    word_list = load_word_list()
    grammar = Grammar(word_list)
    rng = np.random.default_rng(0)
    sentences = [grammar.sentence(rng, "any") for _ in range(300)]
    lengths = {len(s.split()) for s in sentences}
    assert lengths == {len(t) for t in TEMPLATES}
    # a determiner is always followed by an adjective or a noun: an n-gram LM has something
    dets, nouns_adjs = set(word_list.classes["det"]), set(word_list.classes["noun"])
    nouns_adjs |= set(word_list.classes["adj"])
    for s in sentences:
        ws = s.split()
        assert all(b in nouns_adjs for a, b in zip(ws, ws[1:], strict=False) if a in dets)
    assert "an old" in " ".join(Grammar(word_list).sentence(rng, "any") for _ in range(3000))


def test_letters_sharing_gestures_give_identical_signals() -> None:
    opts = SentenceOptions(seed=1, sessions=4, train_sessions=2)
    sig = opts.signal_options()
    from ssr.data.synth_model import make_session, make_world

    world = make_world(sig)
    session = make_session(sig, world, 0)
    typical = letter_durations(1)
    assert gesture_classes("bat pin") == gesture_classes("pan mid")  # b/p/m, t/d/n, a, e/i

    def emg(text: str) -> np.ndarray:
        rng = np.random.default_rng(5)
        return sentence_utterance(sig, world, session, typical, text, rng)

    same, other = emg("bat pin"), emg("pan mid")
    assert np.array_equal(same, other)  # the same gestures: only the LM tells them apart
    different = emg("bat pig")  # g is another gesture
    assert different.shape != same.shape or not np.allclose(different, same)
    assert emg("don't").shape == emg("dont").shape  # the apostrophe has no gesture


def test_gaddy_output_is_read_by_loader(tmp_path: Path) -> None:
    summary = generate_sentences(tmp_path / "g", SentenceOptions(fmt="gaddy", seed=1, **SMALL))
    train = tmp_path / "g" / "train"
    assert next(train.rglob("0_info.json"))  # the silence entry of each session
    utts = read_dir(train)
    assert len(utts) == summary["splits"]["train"]["utterances"] == 20
    assert all(u.emg.shape[1] == 8 and len(u.label.split()) >= 3 for u in utts)


def test_profiles_and_bad_options(tmp_path: Path) -> None:
    summary = generate_sentences(
        tmp_path / "p", SentenceOptions(profile="speaker", **{**SMALL, "sentences": 2})
    )
    assert summary["options"]["profile"] == "speaker" and summary["task"] == "sentences"
    for bad, match in [
        ({"sentences": 0}, "sentences must be >= 1"),
        ({"unseen_words": 0.9}, "unseen_words"),
        ({"unseen_words": 0.0}, "open_share > 0 needs"),
        ({"open_share": 1.5}, "open_share"),
        ({"sessions": 2}, "held-out"),
    ]:
        with pytest.raises(ConfigError, match=match):
            SentenceOptions(**bad).validate()  # type: ignore[arg-type]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        generate_sentences(tmp_path / "busy", SentenceOptions(**SMALL))


def test_word_list_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    path.write_text("[noun]\ndog Cat\n")
    with pytest.raises(DataError, match="w.txt:2"):
        load_word_list(path)
    path.write_text("[noun]\ndog\n")
    with pytest.raises(DataError, match="no words in class"):
        load_word_list(path)


def test_cli_sentences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssr.cli import main

    out = tmp_path / "d"
    argv = ["data", "synth", "--task", "sentences", "--out", str(out), "--sentences", "3",
            "--sessions", "4", "--train-sessions", "2", "--lm-sentences", "20"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "ssr preprocess --config configs/sentences_small.yaml" in printed
    assert f"decoding.lm_text={out / 'lm_text.txt'}" in printed
    assert (out / "lm_text.txt").is_file() and len(list((out / "test").rglob("*.npz"))) == 3
    assert main([*argv, "--sentences", "0"]) == 2
    assert "sentences must be >= 1" in capsys.readouterr().err
    assert main([*argv, "--vocab", "3"]) == 2
    assert "--vocab: only for --task words" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "w"), "--open-share", "0.5"]) == 2
    assert "only for --task sentences" in capsys.readouterr().err
