"""The sentence baseline (linear frame classifier + CTC) learns letters carried by the EMG, and
its posteriorgram plots: native recordings where each letter is a burst on its own (electrode,
frequency) and a space is a pause, preprocessed as ``task: sentences``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from helpers_sentences import make_sentences
from PIL import Image

from ssr.data.processed import ProcessedSplit
from ssr.sentences.baseline import baseline_emissions, fit_linear_ctc
from ssr.sentences.plots import (
    TRANSCRIPT_COLUMNS,
    plot_posteriorgram,
    plot_posteriorgrams,
    transcript_rows,
)
from ssr.sentences.units import output_frames, output_labels


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sentences(tmp_path_factory.mktemp("sentences"))


def _greedy(log_probs: np.ndarray, labels: list[str]) -> str:
    best = log_probs.argmax(axis=1)
    kept = [int(u) for i, u in enumerate(best) if u and (i == 0 or u != best[i - 1])]
    return "".join(labels[u] for u in kept)


def _edits(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _cer(refs: list[str], hyps: list[str]) -> float:
    return sum(_edits(r, h) for r, h in zip(refs, hyps, strict=True)) / sum(map(len, refs))


def test_linear_ctc_learns_the_letters_deterministically(processed: Path, one_thread) -> None:
    train = ProcessedSplit(processed, "train")
    start = time.perf_counter()
    model = fit_linear_ctc(train, subsample=2, seed=0)
    seconds = time.perf_counter() - start
    test = ProcessedSplit(processed, "test")
    emissions, refs = baseline_emissions(str(processed), "test", subsample=2, seed=0)
    assert refs == test.texts and len(emissions) == len(test)
    for (_, length, _), e in zip(test.index, emissions, strict=True):
        assert e.dtype == np.float32 and e.shape == (
            output_frames(int(length), 2),
            len(model.labels),
        )
        assert np.allclose(np.exp(e).sum(axis=1), 1.0, atol=1e-4)
    first = test.features[int(test.index[0, 0]) : int(test.index[0, 0] + test.index[0, 1])]
    assert np.array_equal(model.log_probs(first), emissions[0])  # same seed, same model
    labels = output_labels()
    hyps = [_greedy(e, labels) for e in emissions]
    cer = _cer(refs, hyps)
    print(f"fit {seconds:.2f}s, test CER {cer:.3f}: {refs[0]!r} -> {hyps[0]!r}")
    assert cer < 0.25, list(zip(refs, hyps, strict=True))
    short = [fit_linear_ctc(train, subsample=2, seed=s, steps=5).log_probs(first) for s in (0, 1)]
    assert not np.array_equal(*short)  # the seed draws the start and the batches


def test_posteriorgram_plots(processed: Path, tmp_path: Path) -> None:
    labels = output_labels()
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((40, len(labels)))
    log_probs = (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
    path = plot_posteriorgram(log_probs, labels, "the cat", "the cap", tmp_path / "one.png")
    with Image.open(path) as image:
        assert image.size[0] > 200 and image.size[1] > 200
    items = [(log_probs[: 10 + 5 * i], f"ref {i}", f"hyp {i}") for i in range(5)]
    many = plot_posteriorgrams(items, labels, tmp_path / "many.png")
    with Image.open(many) as image:
        assert image.size[1] > 400
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temp file
    with pytest.raises(ValueError, match="at least one"):
        plot_posteriorgrams([], labels, tmp_path / "none.png")


def test_transcript_rows() -> None:
    rows = transcript_rows(["a.npz", "b.npz"], ["the cat", "a dog"], ["the cap", "a dog"])
    assert [list(r) for r in rows] == [TRANSCRIPT_COLUMNS] * 2
    assert [list(r.values()) for r in rows][1] == ["b.npz", "a dog", "a dog", True]
    with pytest.raises(ValueError, match="2 ids, 1 references"):
        transcript_rows(["a", "b"], ["x"], ["y", "z"])
