"""CTC decoding of per-frame unit log-probabilities into transcripts.

:func:`greedy_decode` takes the best unit of each frame, merges repeats and drops blanks.
:class:`BeamDecoder` runs flashlight-text's lexicon-constrained beam search with the word
n-gram model of :mod:`ssr.sentences.lm` loaded by KenLM: every word is spelled as its letters
followed by the space unit (the word boundary, also the decoder's silence unit, as in
torchaudio's ``ctc_decoder``), words outside the lexicon are never emitted, and one frame that
is certainly a space is appended so that the last word ends like the others.

Confidence: for the greedy path, the mean over frames of the best unit's posterior; for the
beam search, the posterior of the best transcript among the final beam's distinct transcripts
(softmax of their decoder scores, hypotheses with the same words summed).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from flashlight.lib.text.decoder import (
    CriterionType,
    LexiconDecoder,
    LexiconDecoderOptions,
    SmearingMode,
    Trie,
)
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary

from ssr.config import DecodingConfig
from ssr.errors import DataError
from ssr.sentences.lm import UNK, LanguageModel
from ssr.sentences.units import BLANK, SPACE

# Log-probability of every unit but the space in the appended end-of-utterance frame.
_IMPOSSIBLE = -1e4


@dataclass
class Hypothesis:
    """A transcript and the decoder's confidence in it, in [0, 1]."""

    text: str
    confidence: float


class Decoder(Protocol):
    """Anything that turns a (frames, units) log-probability array into a :class:`Hypothesis`."""

    def decode(self, log_probs: np.ndarray) -> Hypothesis: ...


def _check(log_probs: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    if log_probs.ndim != 2 or log_probs.shape[1] != len(labels):
        raise ValueError(
            f"log-probabilities must be (frames, {len(labels)} units), got {log_probs.shape}"
        )
    return np.ascontiguousarray(log_probs, dtype=np.float32)


def greedy_decode(log_probs: np.ndarray, labels: Sequence[str]) -> Hypothesis:
    """Best-path decoding of (frames, units) log-probabilities (unit 0 the blank): repeats
    merged, blanks dropped, spaces stripped and collapsed."""
    log_probs = _check(log_probs, labels)
    if log_probs.shape[0] == 0:
        return Hypothesis("", 0.0)
    best = log_probs.argmax(axis=1)
    keep = np.ones(best.shape, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    text = "".join(labels[i] for i in best[keep] if i != 0)
    confidence = float(np.exp(log_probs.max(axis=1)).mean())
    return Hypothesis(" ".join(text.split()), min(max(confidence, 0.0), 1.0))


class GreedyDecoder:
    """:func:`greedy_decode` as a :class:`Decoder`."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)

    def decode(self, log_probs: np.ndarray) -> Hypothesis:
        """The best-path transcript."""
        return greedy_decode(log_probs, self.labels)


def _load_kenlm(lm: LanguageModel, words: Dictionary, arpa_path: str | None) -> KenLM:
    """KenLM on ``arpa_path`` or on ``lm``'s ARPA text written to a private temporary
    directory (removed once loaded); KenLM's progress output is kept off stdout and stderr."""
    with tempfile.TemporaryDirectory(prefix="ssr-lm-") as tmp:
        path = arpa_path or str(lm.write(tmp))
        with tempfile.TemporaryFile() as log:
            saved = [os.dup(1), os.dup(2)]
            try:
                for fd in (1, 2):
                    os.dup2(log.fileno(), fd)
                return KenLM(path, words)
            except RuntimeError as exc:
                failure = str(exc).strip().splitlines()[-1:]
                raise DataError(
                    f"{path}: KenLM cannot load the language model: {failure}"
                ) from None
            finally:
                for fd, copy in zip((1, 2), saved, strict=True):
                    os.dup2(copy, fd)
                    os.close(copy)


class BeamDecoder:
    """Lexicon-constrained CTC beam search with a word n-gram model (flashlight-text + KenLM).

    ``labels`` are the model's outputs (``labels[0]`` the blank, one of them the space); the
    lexicon is ``lm.words``; ``arpa_path`` is an ARPA file of ``lm`` already on disk, if any.
    """

    def __init__(
        self,
        labels: Sequence[str],
        lm: LanguageModel,
        cfg: DecodingConfig,
        arpa_path: str | None = None,
    ) -> None:
        self.labels = list(labels)
        if not self.labels or self.labels[0] != BLANK or SPACE not in self.labels:
            raise ValueError(f"labels must start with {BLANK!r} and hold the space unit")
        self._space = self.labels.index(SPACE)
        units = Dictionary(self.labels)
        words = Dictionary([*lm.words, UNK])
        self._unk = words.get_index(UNK)
        words.set_default_index(self._unk)
        self._words = words
        self._lm = _load_kenlm(lm, words, arpa_path)
        trie = Trie(len(self.labels), self._space)
        start = self._lm.start(False)
        for word in lm.words:
            letters = [units.get_index(c) for c in word] if set(word) <= set(self.labels) else []
            if not letters or SPACE in word:
                raise DataError(f"lexicon word {word!r} cannot be spelled with the units")
            index = words.get_index(word)
            _, score = self._lm.score(start, index)
            trie.insert([*letters, self._space], index, score)
        trie.smear(SmearingMode.MAX)
        options = LexiconDecoderOptions(
            beam_size=cfg.beam_size,
            beam_size_token=len(self.labels),
            beam_threshold=cfg.beam_threshold,
            lm_weight=cfg.lm_weight,
            word_score=cfg.word_score,
            unk_score=float("-inf"),
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        self._decoder = LexiconDecoder(
            options, trie, self._lm, self._space, 0, self._unk, [], False
        )
        self._end = np.full((1, len(self.labels)), _IMPOSSIBLE, dtype=np.float32)
        self._end[0, self._space] = 0.0

    def decode(self, log_probs: np.ndarray) -> Hypothesis:
        """The best lexicon transcript of (frames, units) log-probabilities."""
        log_probs = _check(log_probs, self.labels)
        if log_probs.shape[0] == 0:
            return Hypothesis("", 0.0)
        emissions = np.ascontiguousarray(np.concatenate([log_probs, self._end]))
        frames, units = emissions.shape
        results = self._decoder.decode(emissions.ctypes.data, frames, units)
        if not results:
            return Hypothesis("", 0.0)
        scores: dict[str, float] = {}
        for result in results:
            text = " ".join(self._words.get_entry(i) for i in result.words if i >= 0)
            scores[text] = float(np.logaddexp(scores.get(text, -np.inf), result.score))
        best = max(scores, key=lambda t: (scores[t], t))
        values = np.array(list(scores.values()))
        confidence = float(np.exp(scores[best] - np.logaddexp.reduce(values)))
        return Hypothesis(best, min(max(confidence, 0.0), 1.0))


def decode_all(emissions: Sequence[np.ndarray], decoder: Decoder) -> list[Hypothesis]:
    """Decode each (frames, units) log-probability array in turn."""
    return [decoder.decode(e) for e in emissions]
