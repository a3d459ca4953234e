"""What every object store offers (:class:`Backend`), the errors it raises and S3's ETags.

Two backends implement the protocol: :class:`ssr.storage.local.LocalBackend` (a directory
tree) and :class:`ssr.storage.s3_backend.S3Backend` (an ``s3://`` bucket).
:mod:`ssr.storage.objects` picks one per URI and the rest of the package never asks again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ssr.errors import StorageError

MB = 1024 * 1024

Progress = Callable[[int], None]


class ObjectNotFoundError(StorageError):
    """The object (or local file) does not exist."""


class PreconditionFailedError(StorageError):
    """A conditional write lost (``If-None-Match: *`` found an object, ``If-Match`` a new ETag)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or local file): ``name`` is relative to the listed prefix."""

    name: str
    uri: str
    size: int
    etag: str | None = None


class Backend(Protocol):
    """Single-object operations on one kind of store; writes are all-or-nothing."""

    def stat(self, uri: str) -> ObjectInfo | None:
        """Size and ETag, or None when the object does not exist."""
        ...

    def read_bytes_etag(self, uri: str) -> tuple[bytes, str]:
        """The whole object and its ETag; a missing one raises ObjectNotFoundError."""
        ...

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Write ``data`` (conditionally) and return the new ETag."""
        ...

    def upload_file(self, src: Path, uri: str, progress: Progress | None = None) -> None:
        """Copy the local file ``src`` to ``uri``."""
        ...

    def download_to(self, uri: str, dest: Path, progress: Progress | None = None) -> None:
        """Copy ``uri`` to the local file ``dest``."""
        ...

    def copy(self, src: str, dst: str) -> None:
        """Copy one object to another name in this store."""
        ...

    def delete(self, uri: str) -> None:
        """Remove an object; a missing one is not an error."""
        ...

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object below ``prefix``, sorted by name."""
        ...

    def file_etag(self, path: Path) -> str | None:
        """The ETag ``path`` would get here (None: listings carry no comparable ETag)."""
        ...

    def localize(self, uri: str, cache_dir: Path) -> Path:
        """A local directory holding the data at ``uri``."""
        ...

    def publish(self, src: Path, uri: str) -> None:
        """Make the finished local directory ``src`` available at ``uri``."""
        ...


def md5_hex(data: bytes) -> str:
    """The ETag S3 gives ``data`` uploaded in one ``PutObject``."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _multipart(digests: list[bytes]) -> str:
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(digests)}"


def bytes_etag_multipart(data: bytes, part_mb: int) -> str:
    """The ETag of ``data`` uploaded in parts of ``part_mb`` MB."""
    part = part_mb * MB
    return _multipart(
        [
            hashlib.md5(data[i : i + part], usedforsecurity=False).digest()
            for i in range(0, len(data), part)
        ]
    )


def file_etag(path: str | os.PathLike[str], part_mb: int) -> str:
    """The ETag S3 gives ``path`` uploaded with parts of ``part_mb`` MB at or above that size."""
    part = part_mb * MB
    digests = []
    with open(path, "rb") as fh:
        while chunk := fh.read(part):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if os.path.getsize(path) < part:
        return digests[0].hex() if digests else md5_hex(b"")
    return _multipart(digests)
