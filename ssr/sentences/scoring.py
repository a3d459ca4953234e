"""Word and character error rates of transcripts (jiwer), with the per-utterance counts that
the paired bootstrap of :mod:`ssr.sentences.significance` resamples.

Errors are substitutions + deletions + insertions of a minimum edit alignment. Words are the
space-separated tokens; characters include the spaces between words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np


@dataclass
class TextScores:
    """Overall WER and CER and, per utterance, the error counts and reference lengths."""

    wer: float
    cer: float
    word_errors: np.ndarray
    ref_words: np.ndarray
    char_errors: np.ndarray
    ref_chars: np.ndarray


def _errors(alignments: list[list[jiwer.AlignmentChunk]]) -> np.ndarray:
    """Substitutions + deletions + insertions per utterance."""
    counts = []
    for chunks in alignments:
        n = 0
        for c in chunks:
            if c.type in ("substitute", "delete"):
                n += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                n += c.hyp_end_idx - c.hyp_start_idx
        counts.append(n)
    return np.array(counts, dtype=np.int64)


def score_texts(refs: Sequence[str], hyps: Sequence[str]) -> TextScores:
    """Scores of hypotheses ``hyps`` (may be empty strings) against non-empty ``refs``."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no utterances to score")
    if any(not r.strip() for r in refs):
        raise ValueError("references must not be empty")
    refs, hyps = list(refs), list(hyps)
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    scores = TextScores(
        wer=float(words.wer),
        cer=float(chars.cer),
        word_errors=_errors(words.alignments),
        ref_words=np.array([len(r) for r in words.references], dtype=np.int64),
        char_errors=_errors(chars.alignments),
        ref_chars=np.array([len(r) for r in chars.references], dtype=np.int64),
    )
    return scores


def unseen_words(refs: Sequence[str], vocabulary: set[str]) -> np.ndarray:
    """Per reference: True when it holds a word outside ``vocabulary``."""
    return np.array([any(w not in vocabulary for w in r.split()) for r in refs], dtype=bool)
