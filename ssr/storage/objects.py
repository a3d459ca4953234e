"""Read, write, list and copy objects at a local path or an ``s3://`` URI with one API.

Each function picks the backend for its URI once (:class:`~ssr.storage.local.LocalBackend` or
:class:`~ssr.storage.s3_backend.S3Backend`) and hands the work to it. Writes never leave a
partial object visible.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssr.config import StorageConfig
from ssr.errors import StorageError
from ssr.storage import dirs
from ssr.storage.backend import Backend, ObjectInfo, Progress
from ssr.storage.dirs import CACHE_MARKER, PUBLISH_LAST
from ssr.storage.local import LocalBackend
from ssr.storage.s3_backend import S3Backend
from ssr.storage.uri import is_s3

__all__ = [
    "CACHE_MARKER",
    "PUBLISH_LAST",
    "ObjectInfo",
    "backend_for",
    "copy",
    "delete",
    "download_dir",
    "download_to",
    "exists",
    "list_objects",
    "localize",
    "publish",
    "read_bytes",
    "read_bytes_etag",
    "stat",
    "upload_dir",
    "upload_file",
    "write_bytes",
]

_LOCAL = LocalBackend()


def backend_for(uri: str | os.PathLike[str], storage: StorageConfig | None = None) -> Backend:
    """The backend that stores ``uri``: S3 for ``s3://`` URIs, the local filesystem otherwise."""
    return S3Backend(storage) if is_s3(uri) else _LOCAL


def stat(uri: str, storage: StorageConfig | None = None) -> ObjectInfo | None:
    """Size and ETag of an object or local file; None when it does not exist."""
    return backend_for(uri, storage).stat(uri)


def exists(uri: str, storage: StorageConfig | None = None) -> bool:
    """True when the object or local file exists."""
    return stat(uri, storage) is not None


def read_bytes(uri: str, storage: StorageConfig | None = None) -> bytes:
    """The whole object; a missing one raises :class:`~ssr.storage.backend.ObjectNotFoundError`."""
    return read_bytes_etag(uri, storage)[0]


def read_bytes_etag(uri: str, storage: StorageConfig | None = None) -> tuple[bytes, str]:
    """The whole object and its ETag (local files: the MD5 of the content, as S3 computes)."""
    return backend_for(uri, storage).read_bytes_etag(uri)


def write_bytes(
    uri: str,
    data: bytes,
    storage: StorageConfig | None = None,
    *,
    if_none_match: bool = False,
    if_match: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Write ``data`` completely or not at all and return the new ETag.

    ``if_none_match=True`` refuses to overwrite an existing object and ``if_match=ETAG``
    refuses unless the current object has that ETag; both raise
    :class:`~ssr.storage.backend.PreconditionFailedError`.
    S3 evaluates the conditions atomically on the server; for local files they are checked
    just before the rename (good enough for one machine, not a lock).
    """
    return backend_for(uri, storage).write_bytes(
        uri, data, if_none_match=if_none_match, if_match=if_match, progress=progress
    )


def upload_file(
    path: str | os.PathLike[str],
    uri: str,
    storage: StorageConfig | None = None,
    progress: Progress | None = None,
) -> None:
    """Copy a local file to ``uri`` (S3: multipart above the threshold; local: atomic copy)."""
    src = Path(path)
    if not src.is_file():
        raise StorageError(f"upload {src}: no such file")
    backend_for(uri, storage).upload_file(src, uri, progress)


def download_to(
    uri: str,
    path: str | os.PathLike[str],
    storage: StorageConfig | None = None,
    progress: Progress | None = None,
) -> Path:
    """Copy ``uri`` to the local ``path`` (temp file, renamed when complete) and return it."""
    dest = Path(path)
    backend_for(uri, storage).download_to(uri, dest, progress)
    return dest


def copy(src: str, dst: str, storage: StorageConfig | None = None) -> None:
    """Copy one object to another name in the same store, completely or not at all.

    S3 to S3 is a server-side copy: no bytes pass through this machine. Mixing the two stores
    is an error; use :func:`upload_file` or :func:`download_to` for that.
    """
    if is_s3(src) != is_s3(dst):
        raise StorageError(f"copy {src} -> {dst}: both must be s3:// URIs or both local paths")
    backend_for(src, storage).copy(src, dst)


def delete(uri: str, storage: StorageConfig | None = None) -> None:
    """Remove an object or local file; a missing one is not an error."""
    backend_for(uri, storage).delete(uri)


def list_objects(prefix: str, storage: StorageConfig | None = None) -> list[ObjectInfo]:
    """Every object below ``prefix`` (a directory-like prefix), sorted by name."""
    return backend_for(prefix, storage).list_objects(prefix)


def upload_dir(
    local_dir: str | os.PathLike[str],
    uri: str,
    storage: StorageConfig | None = None,
    *,
    last: tuple[str, ...] = PUBLISH_LAST,
    skip_unchanged: bool = True,
) -> int:
    """Upload every file below ``local_dir`` to the prefix ``uri``; return how many were sent.

    Files named in ``last`` (``manifest.json``, ``latest.json``) go up after all others, so a
    reader that waits for them never sees a half-uploaded set. Files whose size and ETag already
    match the remote object are skipped.
    """
    return dirs.upload_dir(
        backend_for(uri, storage), Path(local_dir), uri, last=last, skip_unchanged=skip_unchanged
    )


def download_dir(
    uri: str, local_dir: str | os.PathLike[str], storage: StorageConfig | None = None
) -> int:
    """Mirror the prefix ``uri`` into ``local_dir``; unchanged files (same ETag) are kept.

    Returns how many files were downloaded. Local files that no longer exist remotely are
    removed. A prefix with no objects is an :class:`ObjectNotFoundError`.
    """
    return dirs.download_dir(backend_for(uri, storage), uri, Path(local_dir))


def localize(
    uri: str, cache_dir: str | os.PathLike[str], storage: StorageConfig | None = None
) -> Path:
    """A local directory holding the data at ``uri``.

    A local path is returned as is. An ``s3://bucket/prefix`` is mirrored into
    ``cache_dir/bucket/prefix`` (only changed objects are fetched on later calls) and that
    directory is returned.
    """
    return backend_for(uri, storage).localize(uri, Path(cache_dir))


def publish(
    local_dir: str | os.PathLike[str], uri: str, storage: StorageConfig | None = None
) -> str:
    """Make the finished ``local_dir`` available at ``uri`` and return ``uri``.

    S3: uploads changed files, ``manifest.json``/``latest.json`` last. Local: replaces the
    directory ``uri`` atomically with a copy (nothing to do when it is ``local_dir`` itself).
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise StorageError(f"publish {src}: not a directory")
    backend_for(uri, storage).publish(src, uri)
    return uri
