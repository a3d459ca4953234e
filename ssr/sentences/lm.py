"""The word n-gram language model of ``task: sentences`` and the text it is built from.

:func:`build_language_model` counts word n-grams (sentences padded with ``<s>`` and ``</s>``)
and smooths them with interpolated modified Kneser-Ney (Chen & Goodman 1998), the smoothing of
KenLM's ``lmplz``: the highest order uses raw counts, lower orders continuation counts (n-grams
that open a sentence keep raw counts), three discounts per order from the counts of counts
(``lmplz --discount_fallback``'s 0.5, 1, 1.5 where those are degenerate, as in small corpora),
and unigrams are interpolated with the uniform distribution over the vocabulary (with ``</s>``
and ``<unk>``). The result is written as ARPA text with log10 probabilities and backoff weights
(an interpolated model in backoff form), which KenLM loads. The lexicon is the sorted distinct
words.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssr.config import StorageConfig
from ssr.errors import DataError, StorageError
from ssr.fsutil import write_text
from ssr.sentences.units import normalise

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
ARPA_NAME = "lm.arpa"
WORDS_NAME = "words.txt"
_FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)

Gram = tuple[str, ...]


@dataclass
class LanguageModel:
    """A word n-gram model: its order (the highest order in ``arpa``), the lexicon and the
    ARPA text."""

    order: int
    words: list[str]
    arpa: str

    def to_state(self) -> dict[str, Any]:
        """Plain data (str, int, list) for a ``weights_only`` checkpoint."""
        return {"order": self.order, "words": list(self.words), "arpa": self.arpa}

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str) -> LanguageModel:
        """The model saved by :meth:`to_state`; DataError naming ``source`` when malformed."""
        if not isinstance(state, dict):
            raise DataError(f"{source}: language model state must be a dict")
        order, words, arpa = state.get("order"), state.get("words"), state.get("arpa")
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise DataError(f"{source}: language model 'order' must be a positive integer")
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise DataError(f"{source}: language model 'words' must be a non-empty string list")
        if not isinstance(arpa, str) or not arpa.lstrip().startswith("\\data\\"):
            raise DataError(f"{source}: language model 'arpa' must be ARPA text")
        return cls(order=order, words=list(words), arpa=arpa)

    def write(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``lm.arpa`` and ``words.txt`` (one word a line) into ``directory`` atomically;
        the path of the ARPA file."""
        directory = Path(directory)
        write_text(directory / WORDS_NAME, "".join(f"{w}\n" for w in self.words))
        path = directory / ARPA_NAME
        write_text(path, self.arpa)
        return path


def read_lm_text(path: str, storage: StorageConfig | None = None) -> list[str]:
    """The normalised non-blank lines of a text file (local or ``s3://``); a line that does not
    normalise is a DataError naming ``path:line``."""
    from ssr.storage.objects import read_bytes

    try:
        data = read_bytes(path, storage)
    except (OSError, StorageError) as exc:
        raise DataError(f"{path}: cannot read the language model text: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return [
        normalise(line, f"{path}:{number}")
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def build_language_model(sentences: Iterable[str], order: int) -> LanguageModel:
    """An interpolated modified Kneser-Ney word model of ``order`` (lowered to the longest
    padded sentence) over normalised ``sentences``."""
    if order < 1:
        raise ValueError(f"language model order must be >= 1, got {order}")
    padded = [[BOS, *s.split(), EOS] for s in sentences if s.split()]
    if not padded:
        raise DataError("no sentences to build the language model from")
    order = min(order, max(len(p) for p in padded))
    raw: list[Counter[Gram]] = [Counter() for _ in range(order + 1)]
    for sent in padded:
        for k in range(1, order + 1):
            for i in range(len(sent) - k + 1):
                raw[k][tuple(sent[i : i + k])] += 1
    words = sorted({w for sent in padded for w in sent[1:-1]})
    vocabulary = [*words, EOS, UNK]
    probs, bows = _interpolated_kneser_ney(raw, order, vocabulary)
    return LanguageModel(order=order, words=words, arpa=_arpa(probs, bows, order))


def _adjusted_counts(raw: list[Counter[Gram]], order: int) -> list[dict[Gram, int]]:
    """Raw counts at the highest order and for n-grams opening a sentence, else the number of
    distinct words seen before the n-gram (continuation counts)."""
    adjusted: list[dict[Gram, int]] = [{}]
    for k in range(1, order + 1):
        if k == order:
            adjusted.append(dict(raw[k]))
            continue
        left: Counter[Gram] = Counter(g[1:] for g in raw[k + 1])
        adjusted.append({g: (c if g[0] == BOS else left[g]) for g, c in raw[k].items()})
    return adjusted


def _discounts(counts: Iterable[int]) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts D1, D2, D3+ from counts of counts (Chen & Goodman)."""
    n = Counter(min(c, 4) for c in counts)
    if min(n[1], n[2], n[3], n[4]) == 0:
        return _FALLBACK_DISCOUNTS
    y = n[1] / (n[1] + 2 * n[2])
    d = (1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3])
    if not all(0 < dj < j for j, dj in enumerate(d, start=1)):
        return _FALLBACK_DISCOUNTS
    return d


def _interpolated_kneser_ney(
    raw: list[Counter[Gram]], order: int, vocabulary: list[str]
) -> tuple[list[dict[Gram, float]], list[dict[Gram, float]]]:
    """Probabilities of the seen n-grams per order and backoff weights per context."""
    adjusted = _adjusted_counts(raw, order)
    probs: list[dict[Gram, float]] = [{}]
    bows: list[dict[Gram, float]] = [{}]
    for k in range(1, order + 1):
        counts = {g: c for g, c in adjusted[k].items() if g[-1] != BOS}
        if k == 1:
            counts.update({(w,): 0 for w in vocabulary if (w,) not in counts})
        d = _discounts(c for c in counts.values() if c > 0)
        total: defaultdict[Gram, int] = defaultdict(int)
        mass: defaultdict[Gram, float] = defaultdict(float)
        for g, c in counts.items():
            total[g[:-1]] += c
            if c > 0:
                mass[g[:-1]] += d[min(c, 3) - 1]
        gamma = {h: mass[h] / total[h] for h in total}
        level: dict[Gram, float] = {}
        for g, c in counts.items():
            h = g[:-1]
            lower = 1.0 / len(vocabulary) if k == 1 else probs[k - 1][g[1:]]
            own = max(c - d[min(c, 3) - 1], 0.0) / total[h] if c > 0 else 0.0
            level[g] = own + gamma[h] * lower
        probs.append(level)
        bows.append(gamma)
    return probs, bows


def _log10(x: float) -> str:
    return f"{math.log10(x):.6f}" if x > 0 else "-99"


def _arpa(probs: list[dict[Gram, float]], bows: list[dict[Gram, float]], order: int) -> str:
    """ARPA text: log10 probabilities and log10 backoff weights (the next order's gamma)."""
    probs[1][(BOS,)] = 0.0  # <s> is only a context: listed with log10 p = -99
    # KenLM loads bigram models and up: a unigram model gets an empty bigram section.
    sections = max(order, 2)
    probs = probs + [{}] * (sections - order)
    bows = bows + [{}] * (sections - order)
    lines = ["\\data\\", *(f"ngram {k}={len(probs[k])}" for k in range(1, sections + 1)), ""]
    for k in range(1, sections + 1):
        lines.append(f"\\{k}-grams:")
        for g in sorted(probs[k]):
            row = f"{_log10(probs[k][g])}\t{' '.join(g)}"
            if k < sections:
                row += f"\t{_log10(bows[k + 1].get(g, 1.0))}"
            lines.append(row)
        lines.append("")
    lines.append("\\end\\")
    return "\n".join(lines) + "\n"
