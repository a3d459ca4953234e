"""The unit inventory of ``task: sentences`` and the text normalisation into it.

A transcript is lower-cased, typographic apostrophes become ``'``, hyphens, slashes and
underscores become spaces, sentence punctuation (``.,;:!?"()[]``) is dropped and runs of white
space collapse to one space. What is left must consist of the inventory's characters (letters,
space, apostrophe); any other character is an error naming the file. Unit id 0 is the CTC
blank, so a processed data set's ``labels`` (the model's outputs) are ``[BLANK, *units]``.
"""

from __future__ import annotations

import re
import string

from ssr.errors import DataError

BLANK = "<blank>"
SPACE = " "
# The default inventory: space, apostrophe and the 26 letters (ids 1..28; 0 is the blank).
CHARACTERS: tuple[str, ...] = (SPACE, "'", *string.ascii_lowercase)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_TO_SPACE = re.compile(r"[-\u2010-\u2015/_\s]+")
_DROPPED = re.compile(r"[.,;:!?\"()\[\]\u201c\u201d]")


def output_labels(characters: tuple[str, ...] = CHARACTERS) -> list[str]:
    """The model's output classes: the blank, then the characters."""
    return [BLANK, *characters]


def normalise(text: str, source: str, characters: tuple[str, ...] = CHARACTERS) -> str:
    """``text`` in the unit inventory (see the module docstring); a character outside it or an
    empty result is a :class:`DataError` naming ``source``."""
    out = _DROPPED.sub("", text.lower().translate(_APOSTROPHES))
    out = _TO_SPACE.sub(" ", out).strip()
    allowed = set(characters)
    bad = sorted({c for c in out if c not in allowed})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5])
        raise DataError(
            f"{source}: transcript {text!r} holds character(s) {shown} outside the unit "
            f"inventory (letters, space, apostrophe); spell numbers and symbols out"
        )
    if not out:
        raise DataError(f"{source}: empty transcript {text!r}")
    return out


def encode(text: str, labels: list[str]) -> list[int]:
    """Unit ids of a normalised ``text`` (ids index ``labels``; 0 is the blank)."""
    index = {u: i for i, u in enumerate(labels)}
    return [index[c] for c in text]


def decode_ids(ids: list[int], labels: list[str]) -> str:
    """The text of unit ids (blanks already removed)."""
    return "".join(labels[i] for i in ids if i != 0)


def min_ctc_frames(ids: list[int]) -> int:
    """The fewest CTC output frames that can carry ``ids``: one per unit plus a blank between
    each pair of equal neighbours."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:], strict=False) if a == b)


def words_of(text: str) -> list[str]:
    """The words of a normalised transcript."""
    return text.split()


def output_frames(frames: int, subsample: int) -> int:
    """CTC output frames of an utterance of ``frames`` feature frames (the model's front-end
    keeps one frame in ``subsample``, the last partial stride included)."""
    return -(-frames // subsample)


def check_fits(text: str, labels: list[str], frames: int, subsample: int, source: str) -> None:
    """A :class:`DataError` naming ``source`` when ``text`` needs more CTC frames than an
    utterance of ``frames`` feature frames gives the model."""
    need = min_ctc_frames(encode(text, labels))
    have = output_frames(frames, subsample)
    if need > have:
        raise DataError(
            f"{source}: transcript of {len(text)} characters needs {need} CTC frames, the "
            f"recording gives {have} ({frames} feature frames / model.subsample {subsample}); "
            "lower data.hop_length or model.subsample, or check the transcript belongs to it"
        )
