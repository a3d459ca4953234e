"""The text of synthetic sentence data: the shipped word list, a small grammar over it and the
words held out of training (open vocabulary).

Sentences come from templates over word classes (determiner, adjective, noun, verb, ...), so a
word n-gram language model carries real information about them; they are not uniform random
word sequences. A share of the content words (adjectives, nouns, verbs) never occurs in
training sentences; val/test sentences can hold them, and the language-model text knows them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssr.errors import ConfigError, DataError
from ssr.sentences.units import normalise

WORDLIST = Path(__file__).with_name("wordlist.txt")
CONTENT = ("adj", "noun", "verb_past", "verb_base", "verb_intransitive")
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("det", "noun", "verb_intransitive"),
    ("det", "adj", "noun", "verb_intransitive"),
    ("det", "noun", "verb_intransitive", "adv"),
    ("pron", "verb_past", "det", "noun"),
    ("pron", "verb_past", "det", "adj", "noun"),
    ("det", "noun", "verb_past", "det", "noun"),
    ("det", "adj", "noun", "verb_past", "det", "noun"),
    ("pron", "aux", "verb_base", "det", "noun"),
    ("det", "noun", "cop", "adj"),
    ("det", "noun", "cop", "intens", "adj"),
    ("det", "noun", "cop", "prep", "det", "noun"),
    ("pron", "verb_intransitive", "prep", "det", "noun"),
    ("wh", "cop", "det", "noun"),
    ("it_is", "intens", "adj"),
)
_MIN_SEEN = 3  # words each content class keeps for training


@dataclass(frozen=True)
class WordList:
    """Words by grammatical class (``classes``) and every distinct word, sorted (``words``)."""

    classes: dict[str, tuple[str, ...]]

    @property
    def words(self) -> list[str]:
        return sorted({w for ws in self.classes.values() for w in ws})

    def content_words(self) -> list[str]:
        """Words found only in content classes (the candidates to hold out), sorted."""
        function = {w for c, ws in self.classes.items() if c not in CONTENT for w in ws}
        return sorted({w for c in CONTENT for w in self.classes[c]} - function)


def load_word_list(path: str | Path = WORDLIST) -> WordList:
    """Read a word list: ``[class]`` lines open a class, words follow separated by white space,
    ``#`` starts a comment. Every class the templates use must be present."""
    classes: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            current = classes.setdefault(line[1:-1].strip(), [])
            continue
        for word in line.split():
            where = f"{path}:{number}"
            if current is None:
                raise DataError(f"{where}: word {word!r} before any [class] line")
            if normalise(word, where) != word or " " in word:
                raise DataError(f"{where}: {word!r} is not a lowercase word")
            if word not in current:
                current.append(word)
    needed = {c for t in TEMPLATES for c in t} | {"an"}
    missing = sorted(c for c in needed if not classes.get(c))
    if missing:
        raise DataError(f"{path}: no words in class(es) {', '.join(missing)}")
    return WordList({c: tuple(ws) for c, ws in classes.items()})


def choose_held_out(word_list: WordList, share: float, rng: np.random.Generator) -> list[str]:
    """``share`` of the content words, drawn at random, held out of training (sorted)."""
    pool = word_list.content_words()
    count = int(round(share * len(pool)))
    held = sorted(pool[int(i)] for i in rng.permutation(len(pool))[:count])
    for c in CONTENT:
        if len(set(word_list.classes[c]) - set(held)) < _MIN_SEEN:
            raise ConfigError(f"synth: unseen_words {share} leaves too few {c} words to train on")
    return held


def _article(words: list[str]) -> list[str]:
    """ "a" before a vowel becomes "an"."""
    return [
        "an" if w == "a" and i + 1 < len(words) and words[i + 1][0] in "aeiou" else w
        for i, w in enumerate(words)
    ]


class Grammar:
    """Draws sentences from :data:`TEMPLATES`; ``held_out`` words only where asked."""

    def __init__(self, word_list: WordList, held_out: Iterable[str] = ()) -> None:
        self.held_out = frozenset(held_out)
        self.every = word_list.classes
        self.seen = {
            c: tuple(w for w in ws if w not in self.held_out) for c, ws in self.every.items()
        }
        self.unseen = {
            c: tuple(w for w in ws if w in self.held_out) for c, ws in self.every.items()
        }

    def sentence(self, rng: np.random.Generator, kind: str = "seen") -> str:
        """One sentence: ``seen`` (training words only), ``unseen`` (at least one held-out
        word, the others seen) or ``any`` (the whole word list, as text a language model is
        built from)."""
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        pick = self.every if kind == "any" else self.seen
        forced = -1
        if kind == "unseen":
            slots = [i for i, c in enumerate(template) if self.unseen.get(c)]
            while not slots:  # a template with a class that has held-out words
                template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
                slots = [i for i, c in enumerate(template) if self.unseen.get(c)]
            forced = slots[int(rng.integers(len(slots)))]
        words = []
        for i, c in enumerate(template):
            choices = self.unseen[c] if i == forced else pick[c]
            words.append(choices[int(rng.integers(len(choices)))])
        return " ".join(_article(words))

    def has_unseen(self, sentence: str) -> bool:
        return any(w in self.held_out for w in sentence.split())


def draw_unique(
    grammar: Grammar, rng: np.random.Generator, kind: str, taken: set[str], tries: int = 1000
) -> str:
    """A ``kind`` sentence not in ``taken`` (added to it); after ``tries`` draws, a repeat."""
    for _ in range(tries):
        text = grammar.sentence(rng, kind)
        if text not in taken:
            break
    taken.add(text)
    return text


def lm_lines(
    grammar: Grammar, count: int, avoid: set[str], words: list[str], rng: np.random.Generator
) -> list[str]:
    """Language-model text: ``count`` sentences of the whole grammar, none of them in ``avoid``
    (the val/test transcripts), then every word of the word list, one per line."""
    out: list[str] = []
    while len(out) < count:
        text = grammar.sentence(rng, "any")
        if text not in avoid:
            out.append(text)
    return out + words
