"""WER/CER with per-utterance counts against hand-computed values, and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from ssr.sentences.scoring import score_texts, unseen_words
from ssr.sentences.significance import paired_bootstrap


def test_scores_match_hand_counts() -> None:
    refs = ["the cat sat", "on the mat", "hello"]
    hyps = ["the bat sat down", "on mat", ""]
    s = score_texts(refs, hyps)
    # 1: cat->bat (S) + down (I) = 2; 2: "the" deleted = 1; 3: "hello" deleted = 1.
    assert s.word_errors.tolist() == [2, 1, 1]
    assert s.ref_words.tolist() == [3, 3, 1]
    assert s.wer == pytest.approx(4 / 7)
    # Characters (spaces count): 1: c->b + " down" inserted = 6; 2: "the " deleted = 4;
    # 3: 5 deletions.
    assert s.char_errors.tolist() == [6, 4, 5]
    assert s.ref_chars.tolist() == [11, 10, 5]
    assert s.cer == pytest.approx(15 / 26)
    perfect = score_texts(refs, refs)
    assert perfect.wer == perfect.cer == 0.0 and perfect.word_errors.sum() == 0


def test_score_checks() -> None:
    with pytest.raises(ValueError, match="2 references but 1"):
        score_texts(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        score_texts(["a", " "], ["a", "b"])


def test_unseen_words() -> None:
    flags = unseen_words(["the cat", "a dog", "the the"], {"the", "cat", "a"})
    assert flags.tolist() == [False, True, False]


def test_bootstrap_separates_a_better_system_from_an_equal_one() -> None:
    rng = np.random.default_rng(3)
    ref = rng.integers(3, 15, size=400)
    b = rng.binomial(ref, 0.3)
    a_better = rng.binomial(ref, 0.15)
    better = paired_bootstrap(a_better, b, ref, samples=2000, seed=1)
    assert better.p_value < 0.01
    assert better.wer_a == pytest.approx(a_better.sum() / ref.sum())
    assert better.delta == pytest.approx(better.wer_a - better.wer_b) and better.delta < 0
    assert better.delta_ci[0] < better.delta < better.delta_ci[1] < 0
    assert paired_bootstrap(b, b, ref, samples=500).p_value == 1.0  # ties: A is not better
    # A system drawn like B: no evidence, p far from significant.
    same = paired_bootstrap(rng.binomial(ref, 0.3), b, ref, samples=2000, seed=1)
    assert same.p_value > 0.05
    worse = paired_bootstrap(b, a_better, ref, samples=2000, seed=1)
    assert worse.p_value > 0.99
    again = paired_bootstrap(a_better, b, ref, samples=2000, seed=1)
    assert again == better


def test_bootstrap_checks() -> None:
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap(np.array([1, 2]), np.array([1]), np.array([3, 3]))
    with pytest.raises(ValueError, match="reference words"):
        paired_bootstrap(np.array([0]), np.array([0]), np.array([0]))
