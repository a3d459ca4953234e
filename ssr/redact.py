"""Credentials never leave the process in text: URLs lose their passwords before they are
logged, printed, or sent as run parameters, tags or W&B config."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# scheme://user:password@host -> scheme://user:***@host; scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s@]+)@")


def _mask(match: re.Match[str]) -> str:
    user, sep, _secret = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if sep else f"{match['scheme']}{MASK}@"


def redact(text: str) -> str:
    """``text`` with the password (or token) of every URL replaced by ``***``."""
    return _USERINFO.sub(_mask, text) if "@" in text else text


def redact_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every string value redacted (other values unchanged)."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in values.items()}


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the formatted message (and any traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
