"""Short HTTP retries and timeouts for this package's MLflow calls, and only for those.

MLflow reads its HTTP retry settings from ``MLFLOW_HTTP_REQUEST_*`` environment variables on
every request (``mlflow.utils.rest_utils.http_request``); neither ``MlflowClient`` nor the REST
store nor the host credentials take them per client or per call (checked in MLflow 3). Setting
the variables in ``os.environ`` would change them for every thread of the process, and for any
child process started meanwhile. Instead :func:`short_http` sets a context variable, and the
setting objects ``rest_utils`` looks up are wrapped once so that they answer the short values
only inside :func:`short_http` in this thread; everywhere else they answer as before. A value
the user set in the environment always wins. Should a future MLflow rename these objects the
wrappers are simply not installed: calls then use MLflow's own (longer) retries.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from mlflow.utils import rest_utils

log = logging.getLogger(__name__)

# Short HTTP retries/timeouts for our calls: the tracker's queue retries by itself.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
ARTIFACT_TIMEOUT = "300"

_active: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "ssr_mlflow_http", default=None
)


class _Scoped:
    """Stands in for one of MLflow's environment-variable settings inside ``rest_utils``."""

    def __init__(self, original: Any) -> None:
        self._original = original

    def get(self) -> Any:
        values = _active.get()
        name = self._original.name
        if values is None or name not in values or self._original.is_set():
            return self._original.get()
        return self._original.type(values[name])

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._original, attr)

    def __str__(self) -> str:
        return str(self._original)


def _install() -> None:
    for name in HTTP_SETTINGS:
        current = getattr(rest_utils, name, None)
        if current is None or not hasattr(current, "is_set"):
            log.debug("mlflow has no rest_utils.%s; its own HTTP retries apply", name)
            continue
        if not isinstance(current, _Scoped):
            setattr(rest_utils, name, _Scoped(current))


_install()


@contextlib.contextmanager
def short_http(timeout: str | None = None) -> Iterator[None]:
    """MLflow HTTP calls made inside (in this thread) retry once and time out soon."""
    wanted = dict(HTTP_SETTINGS)
    if timeout:
        wanted["MLFLOW_HTTP_REQUEST_TIMEOUT"] = timeout
    token = _active.set(wanted)
    try:
        yield
    finally:
        _active.reset(token)
