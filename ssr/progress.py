"""Progress bars only where someone watches them.

A tqdm bar redrawn into a file, a CI log or a KFP pod log becomes one line per refresh. Bars
are therefore shown only when stderr is a terminal (``SSR_PROGRESS=1`` forces them on,
``SSR_PROGRESS=0`` off); elsewhere the commands log a line per epoch or step instead.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm

ENV = "SSR_PROGRESS"


def interactive() -> bool:
    """Whether progress bars are shown: ``$SSR_PROGRESS`` if set, else stderr is a terminal."""
    forced = os.environ.get(ENV)
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress_bar(iterable: Any = None, *, disable: bool = False, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`interactive`."""
    return tqdm(iterable, disable=disable or not interactive(), **kwargs)
