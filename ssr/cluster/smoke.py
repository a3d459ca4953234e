"""The canary's smoke test: ``GET /health`` and a prediction on a few test recordings, in the
request/response contract of ``ssr serve`` (:mod:`ssr.serving`).

A canary passes when ``/health`` answers 200 and ``POST /invocations`` with
``{"dataframe_records": [{"emg": [[...], ...]}, ...]}`` answers 200 with one well-formed
prediction per recording: a ``label`` among the model's labels (and a ``confidence`` in
[0, 1]) from a word model, a ``text`` from a sentence model. It says nothing about accuracy:
the promotion gate judged that on the whole test split; this checks the deployed server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssr.data.formats import read_native
from ssr.errors import DataError, SSRError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({502, 503, 504})  # a route or activator still settling


class SmokeTestError(SSRError):
    """The canary failed its smoke test; the message says how."""


class UnreachableError(SSRError):
    """The canary's host name does not resolve here: nothing was judged (a laptop outside the
    cluster's domain); the canary stays for a retry with a URL that works."""


@dataclass(frozen=True)
class Recording:
    path: str
    emg: np.ndarray


def smoke_recordings(test_dir: str | os.PathLike[str], count: int) -> list[Recording]:
    """The first ``count`` raw recordings under ``test_dir`` (sorted paths): native ``.npz``
    files, read as :mod:`ssr.registry.pyfunc_model` reads them, else Gaddy ``*_emg.npy``."""
    root = Path(test_dir)
    if count < 1:
        raise DataError(f"the smoke test needs at least one recording, got {count}")
    found = sorted(root.rglob("*.npz")) or sorted(root.rglob("*_emg.npy"))
    if not found:
        raise DataError(f"{root}: no raw test recordings (*.npz or *_emg.npy) for the smoke test")
    chosen = found[:count]
    return [
        Recording(str(p), read_native(p).emg if p.suffix == ".npz" else np.load(p)) for p in chosen
    ]


def payload(recordings: list[Recording]) -> bytes:
    """The ``ssr serve`` request body: one ``dataframe_records`` row per recording."""
    rows = [{"emg": np.asarray(r.emg, dtype=np.float64).tolist()} for r in recordings]
    return json.dumps({"dataframe_records": rows}).encode()


def _request(
    url: str, data: bytes | None, timeout: float, headers: dict[str, str]
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def check_health(url: str, wait: float = 60.0, timeout: float = 10.0) -> None:
    """``GET <url>/health`` until 200; 502-504 and refused connections are retried for up to
    ``wait`` seconds (a new tag route takes a moment), anything else fails at once."""
    deadline = time.monotonic() + wait
    while True:
        try:
            code, body = _request(f"{url}/health", None, timeout, {})
            detail = f"HTTP {code}: {body[:200].decode(errors='replace').strip()}"
            if code == 200:
                return
            if code not in RETRY_STATUS:
                raise SmokeTestError(f"GET {url}/health answered {detail}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, socket.gaierror):
                raise UnreachableError(
                    f"cannot resolve the canary's host ({url}: {reason}): run where the "
                    "cluster's names resolve, or pass --url (e.g. a port-forward); a retry "
                    "resumes the canary"
                ) from None
            detail = str(reason)
        if time.monotonic() > deadline:
            raise SmokeTestError(f"GET {url}/health failed for {wait:.0f}s ({detail})")
        time.sleep(1.0)


def check_predictions(
    predictions: Any, count: int, task: str, labels: list[str] | None
) -> list[str]:
    """The predicted labels (or texts); :class:`SmokeTestError` unless there is one
    well-formed prediction per recording."""
    if not isinstance(predictions, list) or len(predictions) != count:
        got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        raise SmokeTestError(f"expected {count} predictions, got {got}")
    out = []
    for i, item in enumerate(predictions):
        if not isinstance(item, dict):
            raise SmokeTestError(f"prediction {i} is not an object: {str(item)[:80]}")
        if task == "sentences":
            text = item.get("text")
            if not isinstance(text, str):
                raise SmokeTestError(f"prediction {i} has no text: {str(item)[:120]}")
            out.append(text)
            continue
        label, confidence = item.get("label"), item.get("confidence")
        if not isinstance(label, str) or (labels and label not in labels):
            raise SmokeTestError(f"prediction {i}: label {label!r} is not one of the model's")
        if not isinstance(confidence, (int, float)) or not 0.0 <= confidence <= 1.0:
            raise SmokeTestError(f"prediction {i}: confidence {confidence!r} is not in [0, 1]")
        out.append(label)
    return out


def smoke_test(
    url: str,
    recordings: list[Recording],
    task: str = "words",
    labels: list[str] | None = None,
    health_wait: float = 60.0,
    timeout: float = 120.0,
) -> str:
    """Health and one prediction per recording on ``url``; a one-line summary, or
    :class:`SmokeTestError` saying what failed."""
    url = url.rstrip("/")
    check_health(url, wait=health_wait)
    headers = {"Content-Type": "application/json"}
    try:
        code, body = _request(f"{url}/invocations", payload(recordings), timeout, headers)
    except (urllib.error.URLError, OSError) as exc:
        raise SmokeTestError(f"POST {url}/invocations: {getattr(exc, 'reason', exc)}") from None
    text = body[:300].decode(errors="replace").strip()
    if code != 200:
        raise SmokeTestError(f"POST {url}/invocations answered HTTP {code}: {text}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise SmokeTestError(f"POST {url}/invocations answered no JSON: {text}") from None
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    got = check_predictions(predictions, len(recordings), task, labels)
    log.info("smoke test of %s: %s", url, ", ".join(got))
    return f"/health 200 and {len(got)} well-formed predictions"
