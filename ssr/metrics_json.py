"""Checks shared by the readers of ``ssr evaluate``'s ``metrics.json`` (words and sentences)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssr.errors import DataError


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_per_session(path: Path, per_session: Any, score: str) -> None:
    """``per_session`` (if present) must map each session to numbers with ``num_samples`` and
    ``score``; DataError naming ``path`` and the session."""
    if per_session is None:
        return
    if not isinstance(per_session, dict):
        raise DataError(f"{path}: 'per_session' must be an object of sessions")
    for name, scores in per_session.items():
        if not (
            isinstance(scores, dict)
            and all(is_number(scores.get(k)) for k in ("num_samples", score))
            and all(is_number(v) for v in scores.values())
        ):
            raise DataError(
                f"{path}: per_session[{name!r}] must be an object of numbers with "
                f"num_samples and {score}"
            )
