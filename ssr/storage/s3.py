"""The boto3 S3 client, its retry policy, and S3 errors turned into :class:`StorageError`.

Endpoint: ``storage.endpoint_url`` when set, else boto3's own ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` environment variables, else AWS. Credentials come from the usual AWS
chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles).

Retries are botocore's own (``standard`` mode): each HTTP request, so each part of a multipart
transfer on its own, is tried at most ``storage.max_attempts`` times in all when it fails
transiently (connection errors, timeouts, 500/502/503/504, throttling), with jittered
exponential backoff capped at 20 s. :func:`errors` turns what is left into a
:class:`StorageError` that names the URI.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

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
from s3transfer.exceptions import RetriesExceededError

from ssr.config import StorageConfig
from ssr.errors import StorageError
from ssr.storage.backend import ObjectNotFoundError, PreconditionFailedError

__all__ = [
    "RETRY_MODE",
    "STREAM_ERRORS",
    "ObjectNotFoundError",
    "PreconditionFailedError",
    "client",
    "describe",
    "error_code",
    "errors",
    "is_transient",
    "retry_config",
]

# "adaptive" would add client-side rate limiting on throttling; "standard" retries the same
# errors without slowing down requests that are not failing.
RETRY_MODE = "standard"

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
STREAM_ERRORS = (IncompleteReadError, ResponseStreamingError, RetriesExceededError)

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _endpoint(storage: StorageConfig) -> str | None:
    return (
        storage.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


def retry_config(storage: StorageConfig) -> dict[str, Any]:
    """botocore's ``retries`` setting: ``max_attempts`` counts every try, the first included."""
    return {"mode": RETRY_MODE, "total_max_attempts": storage.max_attempts}


def client(storage: StorageConfig | None = None) -> Any:
    """A (cached, thread-safe) boto3 S3 client for ``storage`` (retries: :func:`retry_config`)."""
    storage = storage or StorageConfig()
    endpoint = _endpoint(storage)
    key = (
        endpoint,
        storage.region,
        storage.max_attempts,
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_SESSION_TOKEN"),
        os.environ.get("AWS_PROFILE"),
    )
    with _clients_lock:
        if key not in _clients:
            config = BotoConfig(
                retries=retry_config(storage),
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
    """Worth retrying: connection trouble, cut-off bodies, timeouts, 5xx and throttling."""
    if isinstance(exc, (ConnectionError, HTTPClientError, *STREAM_ERRORS)):
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


def _attempts(exc: BaseException, storage: StorageConfig) -> int:
    if isinstance(exc, ClientError):
        retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts")
        if retried is not None:
            return int(retried) + 1
    return storage.max_attempts


def _translate(what: str, uri: str, exc: BaseException, storage: StorageConfig) -> StorageError:
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
    if is_transient(exc):
        n = _attempts(exc, storage)
        return StorageError(f"{what} {uri}: failed after {n} attempts: {describe(exc)}")
    return StorageError(text)


@contextlib.contextmanager
def errors(what: str, uri: str, storage: StorageConfig | None = None) -> Iterator[None]:
    """Raise boto errors inside the block as a :class:`StorageError` naming ``what`` and ``uri``.

    :class:`ObjectNotFoundError` and :class:`PreconditionFailedError` are subclasses; an error
    that stayed transient through every retry says how many attempts were made.
    """
    try:
        yield
    except StorageError:
        raise
    except (BotoCoreError, ClientError, RetriesExceededError) as exc:
        raise _translate(what, uri, exc, storage or StorageConfig()) from exc
