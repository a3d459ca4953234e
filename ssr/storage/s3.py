"""The boto3 S3 client and the retry policy for every object-storage call.

Endpoint: ``storage.endpoint_url`` when set, else boto3's own ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` environment variables, else AWS. Credentials come from the usual AWS
chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).

botocore's own retries are switched off; :func:`call` retries transient failures (connection
errors, timeouts, 5xx, throttling) with exponential backoff and turns everything else into a
:class:`StorageError` that names the URI.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ResponseStreamingError,
)

from ssr.config import StorageConfig
from ssr.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

BASE_DELAY_S = 0.5
MAX_DELAY_S = 20.0

_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class ObjectNotFoundError(StorageError):
    """The object (or local file) does not exist."""


class PreconditionFailedError(StorageError):
    """A conditional write lost (``If-None-Match: *`` found an object, ``If-Match`` a new ETag)."""


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _endpoint(storage: StorageConfig) -> str | None:
    return (
        storage.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def client(storage: StorageConfig | None = None) -> Any:
    """A (cached, thread-safe) boto3 S3 client for ``storage``; botocore retries are off."""
    storage = storage or StorageConfig()
    endpoint = _endpoint(storage)
    key = (
        endpoint,
        storage.region,
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_SESSION_TOKEN"),
        os.environ.get("AWS_PROFILE"),
    )
    with _clients_lock:
        if key not in _clients:
            config = BotoConfig(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=16,
            )
            session = boto3.session.Session()
            _clients[key] = session.client(
                "s3", endpoint_url=endpoint, region_name=storage.region, config=config
            )
        return _clients[key]


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('' for other exceptions)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: connection trouble, timeouts, 5xx and throttling."""
    if isinstance(
        exc, ConnectionError | HTTPClientError | IncompleteReadError | ResponseStreamingError
    ):
        return True
    if isinstance(exc, ClientError):
        status = _status(exc)
        return error_code(exc) in _TRANSIENT_CODES or status >= 500 or status == 429
    return False


def describe(exc: BaseException) -> str:
    """A short, one-line description of a boto error."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = _status(exc)
        message = err.get("Message") or ""
        return f"{err.get('Code', 'error')} (HTTP {status}){': ' + message if message else ''}"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    return f"{type(exc).__name__}: {exc}"


def _permanent(what: str, uri: str, exc: BaseException) -> StorageError:
    code = error_code(exc)
    text = f"{what} {uri}: {describe(exc)}"
    if code in _NOT_FOUND_CODES:
        return ObjectNotFoundError(f"{what} {uri}: no such object")
    if code == "NoSuchBucket":
        return StorageError(f"{what} {uri}: bucket does not exist")
    if code == "PreconditionFailed" or _status(exc) == 412:
        return PreconditionFailedError(text)
    if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
        return StorageError(f"{text} (check credentials and bucket policy)")
    return StorageError(text)


def call(
    what: str,
    uri: str,
    fn: Callable[[], T],
    storage: StorageConfig | None = None,
    *,
    base_delay: float = BASE_DELAY_S,
) -> T:
    """Run ``fn`` with retries on transient errors, at most ``storage.max_attempts`` times.

    The wait doubles after each failure (``base_delay``, 2x, 4x, ... capped at 20 s, with jitter).
    A permanent error, or the last transient one, is raised as a :class:`StorageError` naming
    ``what`` and ``uri``; :class:`ObjectNotFoundError` and :class:`PreconditionFailedError`
    are subclasses.
    """
    attempts = (storage or StorageConfig()).max_attempts
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except StorageError:
            raise
        except (BotoCoreError, ClientError) as exc:
            if not is_transient(exc):
                raise _permanent(what, uri, exc) from exc
            if attempt == attempts:
                raise StorageError(
                    f"{what} {uri}: failed after {attempts} attempts: {describe(exc)}"
                ) from exc
            delay = min(MAX_DELAY_S, base_delay * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)
            log.warning(
                "%s %s: %s; retry %d/%d in %.1fs",
                what,
                uri,
                describe(exc),
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
