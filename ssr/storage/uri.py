"""Locations: a local path or an ``s3://bucket/prefix`` URI, parsed and joined the same way."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ssr.errors import StorageError

S3_SCHEME = "s3://"


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True when ``uri`` is an ``s3://`` URI (anything else is a local path)."""
    return str(uri).startswith(S3_SCHEME)


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or key prefix) inside it."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"

    def child(self, *parts: str) -> S3Location:
        """The location ``parts`` below this one (``/``-joined, no empty segments)."""
        segments = [p for p in self.key.split("/") if p]
        for part in parts:
            segments.extend(s for s in part.split("/") if s)
        return S3Location(self.bucket, "/".join(segments))

    def __str__(self) -> str:
        return self.uri


def parse_s3(uri: str) -> S3Location:
    """Split ``s3://bucket/some/key`` into bucket and key; a malformed URI is a StorageError."""
    if not is_s3(uri):
        raise StorageError(f"{uri}: not an s3:// URI")
    rest = uri[len(S3_SCHEME) :]
    bucket, _, key = rest.partition("/")
    if not bucket or any(c in bucket for c in " \\?#"):
        raise StorageError(f"{uri}: malformed s3 URI, expected s3://bucket/prefix")
    if "//" in key or key.startswith("/"):
        raise StorageError(f"{uri}: malformed s3 URI, empty path segment")
    return S3Location(bucket, key.strip("/"))


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path segments onto a local path or an s3 URI."""
    text = str(base)
    if is_s3(text):
        return parse_s3(text).child(*parts).uri
    return str(Path(text, *parts))


def basename(uri: str | os.PathLike[str]) -> str:
    """The last segment of a local path or s3 URI."""
    text = str(uri)
    if is_s3(text):
        return parse_s3(text).key.rsplit("/", 1)[-1]
    return Path(text).name
