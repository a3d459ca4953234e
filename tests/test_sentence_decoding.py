"""The word language model (ARPA text KenLM loads, probabilities that sum to one) and CTC
decoding: best path, and the lexicon + LM beam search recovering words the best path gets
wrong."""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from ssr.config import DecodingConfig
from ssr.errors import DataError
from ssr.sentences.decoding import BeamDecoder, GreedyDecoder, decode_all, greedy_decode
from ssr.sentences.lm import LanguageModel, build_language_model, read_lm_text
from ssr.sentences.units import output_labels

LABELS = output_labels()
SENTENCES = [
    "put the book on the table",
    "the man bought a map",
    "pat the baby",
    "bring me the book",
    "sit on the mat",
    "the map is on the table",
]


def _grammar_corpus(n: int, seed: int = 0) -> list[str]:
    """Sentences of a small grammar, enough for non-degenerate Kneser-Ney discounts."""
    rng = np.random.default_rng(seed)
    subjects = ["the man", "a woman", "the baby", "my friend", "the dog"]
    verbs = ["bought", "saw", "put", "wanted", "took"]
    objects = ["a map", "the book", "the table", "a mat", "the ball", "some bread"]
    return [
        " ".join(
            [rng.choice(subjects), rng.choice(verbs), rng.choice(objects)]
            + (["today"] if rng.random() < 0.3 else [])
        )
        for _ in range(n)
    ]


def _read_arpa(text: str) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    """log10 probabilities and backoff weights of an ARPA text."""
    probs: dict[tuple[str, ...], float] = {}
    bows: dict[tuple[str, ...], float] = {}
    declared: dict[int, int] = {}
    order = 0
    for line in text.splitlines():
        if line.startswith("ngram "):
            k, count = line[6:].split("=")
            declared[int(k)] = int(count)
        elif line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
        elif line and not line.startswith("\\") and order:
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            assert len(gram) == order
            probs[gram] = float(fields[0])
            bows[gram] = float(fields[2]) if len(fields) > 2 else 0.0
    for k, count in declared.items():
        assert sum(1 for g in probs if len(g) == k) == count
    return probs, bows


def _arpa_log10(probs: dict, bows: dict, context: tuple[str, ...], word: str) -> float:
    if (*context, word) in probs:
        return probs[(*context, word)]
    return bows.get(context, 0.0) + _arpa_log10(probs, bows, context[1:], word)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lm_distributions_sum_to_one(order: int) -> None:
    lm = build_language_model(_grammar_corpus(300), order)
    assert lm.order == order
    probs, bows = _read_arpa(lm.arpa)
    predicted = [*lm.words, "</s>", "<unk>"]
    contexts = {g for g in probs if g[-1] != "</s>" and len(g) < order} | {()}
    for context in contexts:
        total = sum(10 ** _arpa_log10(probs, bows, context, w) for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-4), context
    # Each n-gram's prefix and suffix are listed, as a backoff model needs.
    for gram in probs:
        if len(gram) > 1:
            assert gram[:-1] in probs and gram[1:] in probs


def test_kenlm_loads_the_arpa_and_agrees(tmp_path: Path) -> None:
    lm = build_language_model(SENTENCES, 3)
    path = lm.write(tmp_path)
    assert (tmp_path / "words.txt").read_text().split("\n")[:-1] == lm.words
    words = Dictionary([*lm.words, "<unk>"])
    words.set_default_index(words.get_index("<unk>"))
    kenlm = KenLM(str(path), words)
    probs, bows = _read_arpa(lm.arpa)
    start = kenlm.start(False)
    for first, second in itertools.product(lm.words, lm.words[:4]):
        state, s1 = kenlm.score(start, words.get_index(first))
        _, s2 = kenlm.score(state, words.get_index(second))
        assert s1 == pytest.approx(_arpa_log10(probs, bows, ("<s>",), first), abs=1e-4)
        expected = _arpa_log10(probs, bows, ("<s>", first), second)
        assert s2 == pytest.approx(expected, abs=1e-4)
        total = sum(10 ** kenlm.score(state, words.get_index(w))[1] for w in [*lm.words, "<unk>"])
        assert total + 10 ** kenlm.finish(state)[1] == pytest.approx(1.0, abs=1e-4)

    def sentence_log10(text: str) -> float:
        state, total = kenlm.start(False), 0.0
        for w in text.split():
            state, s = kenlm.score(state, words.get_index(w))
            total += s
        return total + kenlm.finish(state)[1]

    assert sentence_log10("the man bought a map") > sentence_log10("map a bought man the") + 2


def test_lm_state_round_trip_and_checks() -> None:
    lm = build_language_model(SENTENCES, 2)
    assert lm.words == sorted({w for s in SENTENCES for w in s.split()})
    again = LanguageModel.from_state(lm.to_state(), "ckpt.pt")
    assert again == lm
    with pytest.raises(DataError, match="ckpt.pt: .*'arpa'"):
        LanguageModel.from_state({**lm.to_state(), "arpa": "nonsense"}, "ckpt.pt")
    with pytest.raises(DataError, match="ckpt.pt: .*'order'"):
        LanguageModel.from_state({**lm.to_state(), "order": "3"}, "ckpt.pt")
    with pytest.raises(DataError, match="no sentences"):
        build_language_model(["", "  "], 3)


def test_read_lm_text_normalises_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "lm.txt"
    path.write_text("The Man's map.\n\nsit-on the mat\n")
    assert read_lm_text(str(path)) == ["the man's map", "sit on the mat"]
    path.write_text("fine line\n\nit costs 5 pounds\n")
    with pytest.raises(DataError, match=r"lm.txt:3: .*'5'"):
        read_lm_text(str(path))
    with pytest.raises(DataError, match="missing.txt"):
        read_lm_text(str(tmp_path / "missing.txt"))


def _emissions(frames: list[dict[str, float]]) -> np.ndarray:
    """Log-probabilities from per-frame unit -> probability maps (the rest shared equally)."""
    out = np.empty((len(frames), len(LABELS)), dtype=np.float32)
    for t, frame in enumerate(frames):
        rest = (1.0 - sum(frame.values())) / (len(LABELS) - len(frame))
        p = np.full(len(LABELS), rest)
        for unit, q in frame.items():
            p[LABELS.index(unit)] = q
        out[t] = np.log(p)
    return out


def _spoken(text: str, confuse: dict[str, str] | None = None) -> np.ndarray:
    """Two frames per character and a blank after each; a character in ``confuse`` loses
    narrowly to its confusion (another unit of its gesture class, as b/p/m for the lips)."""
    frames: list[dict[str, float]] = []
    for c in text:
        if confuse and c in confuse:
            frames += [{confuse[c]: 0.5, c: 0.4}] * 2
        else:
            frames += [{c: 0.9}] * 2
        frames.append({"<blank>": 0.9})
    return _emissions(frames)


@pytest.fixture(scope="module")
def beam() -> BeamDecoder:
    return BeamDecoder(LABELS, build_language_model(SENTENCES, 3), DecodingConfig())


def test_greedy_decode() -> None:
    e = _emissions(
        [{" ": 0.9}, {"a": 0.8}, {"a": 0.8}, {"<blank>": 0.9}, {"a": 0.7}]
        + [{" ": 0.9}] * 3
        + [{"b": 0.6}, {" ": 0.9}]
    )
    hyp = greedy_decode(e, LABELS)
    assert hyp.text == "aa b"
    assert hyp.confidence == pytest.approx(
        np.mean([0.9, 0.8, 0.8, 0.9, 0.7, 0.9, 0.9, 0.9, 0.6, 0.9]), abs=1e-5
    )
    assert greedy_decode(np.zeros((0, len(LABELS)), np.float32), LABELS).text == ""
    with pytest.raises(ValueError, match="29 units"):
        greedy_decode(np.zeros((3, 5), np.float32), LABELS)


def test_beam_recovers_lexicon_words_the_best_path_misses(beam: BeamDecoder) -> None:
    for text, confuse in [
        ("put the book on the table", {"b": "p", "p": "m"}),
        ("the man bought a map", {"b": "m", "m": "b"}),
    ]:
        e = _spoken(text, confuse)
        greedy = greedy_decode(e, LABELS)
        assert greedy.text != text and len(greedy.text) == len(text)
        hyp = beam.decode(e)
        assert hyp.text == text
        assert 0.5 < hyp.confidence <= 1.0


def test_the_lm_context_picks_the_word(beam: BeamDecoder) -> None:
    # "?at" with b, p and m equally likely: "pat" opens "pat the baby", "mat" ends "sit on the".
    def ambiguous(text: str) -> np.ndarray:
        frames: list[dict[str, float]] = []
        for c in text:
            frames += [{"b": 0.3, "p": 0.3, "m": 0.3} if c == "?" else {c: 0.9}] * 2
            frames.append({"<blank>": 0.9})
        return _emissions(frames)

    assert beam.decode(ambiguous("?at the baby")).text == "pat the baby"
    assert beam.decode(ambiguous("sit on the ?at")).text == "sit on the mat"


def test_beam_decoding_is_deterministic_quiet_and_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    lm = build_language_model(SENTENCES, 3)
    first = BeamDecoder(LABELS, lm, DecodingConfig(beam_size=8))
    assert list(tmp_path.iterdir()) == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    second = BeamDecoder(LABELS, lm, DecodingConfig(beam_size=8), arpa_path=str(lm.write(tmp_path)))
    rng = np.random.default_rng(0)
    noise = [rng.normal(size=(n, len(LABELS))).astype(np.float32) * 3 for n in (20, 60, 1)]
    noise = [x - np.logaddexp.reduce(x, axis=1, keepdims=True) for x in noise]
    a, b = decode_all(noise, first), decode_all(noise, second)
    assert a == b == decode_all(noise, first)
    for hyp in a:
        assert set(hyp.text.split()) <= set(lm.words) and 0.0 <= hyp.confidence <= 1.0
    assert [h.text for h in decode_all(noise, GreedyDecoder(LABELS))] == [
        greedy_decode(x, LABELS).text for x in noise
    ]


def test_an_unloadable_arpa_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=5\n\n\\1-grams:\n-1\ta\n\\end\\\n")
    lm = build_language_model(SENTENCES, 2)
    with pytest.raises(DataError, match="bad.arpa: KenLM cannot load"):
        BeamDecoder(LABELS, lm, DecodingConfig(), arpa_path=str(bad))
    assert math.isfinite(
        BeamDecoder(LABELS, lm, DecodingConfig()).decode(_spoken("pat")).confidence
    )
