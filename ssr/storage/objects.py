"""Read, write, list and copy objects at a local path or an ``s3://`` URI with one API.

Writes never leave a partial object visible: local files are written to a temp name, fsynced
and renamed; S3 objects appear only when ``PutObject`` or ``CompleteMultipartUpload`` succeeds
(objects at or above ``storage.multipart_threshold_mb`` go up in parts of that size).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from boto3.s3.transfer import TransferConfig

from ssr.config import StorageConfig
from ssr.errors import StorageError
from ssr.fsutil import atomic_dir, atomic_path
from ssr.progress import progress_bar
from ssr.storage import s3
from ssr.storage.s3 import ObjectNotFoundError, PreconditionFailedError
from ssr.storage.uri import S3Location, is_s3, join, parse_s3

MB = 1024 * 1024
CACHE_MARKER = ".ssr-localized.json"
PUBLISH_LAST = ("manifest.json", "latest.json")

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ObjectInfo:
    """One object (or local file): ``name`` is relative to the listed prefix."""

    name: str
    uri: str
    size: int
    etag: str | None = None


def _cfg(storage: StorageConfig | None) -> StorageConfig:
    return storage or StorageConfig()


def transfer_config(storage: StorageConfig | None = None) -> TransferConfig:
    """Multipart settings: parts of ``multipart_threshold_mb`` once an object reaches that size."""
    size = _cfg(storage).multipart_threshold_mb * MB
    return TransferConfig(
        multipart_threshold=size, multipart_chunksize=size, max_concurrency=4, use_threads=True
    )


def _clean_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def file_etag(path: str | os.PathLike[str], storage: StorageConfig | None = None) -> str:
    """The ETag S3 gives ``path`` when uploaded with :func:`transfer_config` (MD5 or multipart)."""
    part = _cfg(storage).multipart_threshold_mb * MB
    size = os.path.getsize(path)
    digests = []
    with open(path, "rb") as fh:
        while chunk := fh.read(part):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if size < part:
        return digests[0].hex() if digests else hashlib.md5(b"", usedforsecurity=False).hexdigest()
    combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(digests)}"


def _bytes_etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- single objects


def stat(uri: str, storage: StorageConfig | None = None) -> ObjectInfo | None:
    """Size and ETag of an object or local file; None when it does not exist."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.is_file():
            return None
        return ObjectInfo(path.name, str(path), path.stat().st_size)
    loc = parse_s3(uri)
    try:
        head = s3.call(
            "stat",
            uri,
            lambda: s3.client(storage).head_object(Bucket=loc.bucket, Key=loc.key),
            storage,
        )
    except ObjectNotFoundError:
        return None
    return ObjectInfo(
        loc.key.rsplit("/", 1)[-1], uri, int(head["ContentLength"]), _clean_etag(head["ETag"])
    )


def exists(uri: str, storage: StorageConfig | None = None) -> bool:
    """True when the object or local file exists."""
    return stat(uri, storage) is not None


def read_bytes(uri: str, storage: StorageConfig | None = None) -> bytes:
    """The whole object; a missing one raises :class:`ObjectNotFoundError`."""
    data, _ = read_bytes_etag(uri, storage)
    return data


def read_bytes_etag(uri: str, storage: StorageConfig | None = None) -> tuple[bytes, str]:
    """The whole object and its ETag (local files: the MD5 of the content, as S3 computes)."""
    if not is_s3(uri):
        try:
            data = Path(uri).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"read {uri}: no such file") from None
        except OSError as exc:
            raise StorageError(f"read {uri}: {exc}") from None
        return data, _bytes_etag(data)
    loc = parse_s3(uri)

    def get() -> tuple[bytes, str]:
        resp = s3.client(storage).get_object(Bucket=loc.bucket, Key=loc.key)
        return resp["Body"].read(), _clean_etag(resp["ETag"]) or ""

    return s3.call("read", uri, get, storage)


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
    :class:`PreconditionFailedError`.
    S3 evaluates the conditions atomically on the server; for local files they are checked
    just before the rename (good enough for one machine, not a lock).
    """
    if not is_s3(uri):
        _check_local_condition(uri, if_none_match, if_match)
        with atomic_path(uri) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return _bytes_etag(data)
    loc = parse_s3(uri)
    cfg = _cfg(storage)
    conditional = if_none_match or if_match is not None
    if conditional or len(data) < cfg.multipart_threshold_mb * MB:
        kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match.strip(chr(34))}"'

        def put() -> str:
            etag = _clean_etag(s3.client(storage).put_object(**kwargs)["ETag"]) or ""
            if progress:
                progress(len(data))
            return etag

        return s3.call("write", uri, put, storage)
    _upload_fileobj(lambda: io.BytesIO(data), loc, storage, progress)
    return _bytes_etag_multipart(data, cfg)


def _bytes_etag_multipart(data: bytes, cfg: StorageConfig) -> str:
    part = cfg.multipart_threshold_mb * MB
    digests = [
        hashlib.md5(data[i : i + part], usedforsecurity=False).digest()
        for i in range(0, len(data), part)
    ]
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def _check_local_condition(uri: str, if_none_match: bool, if_match: str | None) -> None:
    path = Path(uri)
    if if_none_match and path.exists():
        raise PreconditionFailedError(f"write {uri}: exists already (If-None-Match: *)")
    if if_match is not None:
        if not path.exists():
            raise PreconditionFailedError(f"write {uri}: does not exist (If-Match)")
        if _bytes_etag(path.read_bytes()) != if_match.strip('"'):
            raise PreconditionFailedError(f"write {uri}: changed since it was read (If-Match)")


def _upload_fileobj(
    opener: Callable[[], BinaryIO],
    loc: S3Location,
    storage: StorageConfig | None,
    progress: Progress | None,
) -> None:
    def upload() -> None:
        with opener() as fh:
            s3.client(storage).upload_fileobj(
                fh, loc.bucket, loc.key, Config=transfer_config(storage), Callback=progress
            )

    s3.call("upload", loc.uri, upload, storage)


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
    if not is_s3(uri):
        with atomic_path(uri) as tmp:
            shutil.copyfile(src, tmp)
        if progress:
            progress(src.stat().st_size)
        return
    _upload_fileobj(lambda: src.open("rb"), parse_s3(uri), storage, progress)


def download_to(
    uri: str,
    path: str | os.PathLike[str],
    storage: StorageConfig | None = None,
    progress: Progress | None = None,
) -> Path:
    """Copy ``uri`` to the local ``path`` (temp file, renamed when complete) and return it."""
    dest = Path(path)
    if not is_s3(uri):
        if not Path(uri).is_file():
            raise ObjectNotFoundError(f"download {uri}: no such file")
        with atomic_path(dest) as tmp:
            shutil.copyfile(uri, tmp)
        return dest
    loc = parse_s3(uri)

    def download() -> None:
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
            s3.client(storage).download_fileobj(
                loc.bucket, loc.key, fh, Config=transfer_config(storage), Callback=progress
            )

    s3.call("download", uri, download, storage)
    return dest


def copy(src: str, dst: str, storage: StorageConfig | None = None) -> None:
    """Copy one object to another name in the same store, completely or not at all.

    S3 to S3 is a server-side copy (multipart above the threshold): no bytes pass through
    this machine. Local to local is a temp file renamed into place. Mixing the two is an error;
    use :func:`upload_file` or :func:`download_to` for that.
    """
    if is_s3(src) != is_s3(dst):
        raise StorageError(f"copy {src} -> {dst}: both must be s3:// URIs or both local paths")
    if not is_s3(src):
        if not Path(src).is_file():
            raise ObjectNotFoundError(f"copy {src}: no such file")
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return
    source, target = parse_s3(src), parse_s3(dst)

    def server_side_copy() -> None:
        s3.client(storage).copy(
            {"Bucket": source.bucket, "Key": source.key},
            target.bucket,
            target.key,
            Config=transfer_config(storage),
        )

    s3.call("copy", src, server_side_copy, storage)


def delete(uri: str, storage: StorageConfig | None = None) -> None:
    """Remove an object or local file; a missing one is not an error."""
    if not is_s3(uri):
        with contextlib.suppress(FileNotFoundError):
            Path(uri).unlink()
        return
    loc = parse_s3(uri)
    s3.call(
        "delete",
        uri,
        lambda: s3.client(storage).delete_object(Bucket=loc.bucket, Key=loc.key),
        storage,
    )


# --------------------------------------------------------------------------- prefixes / dirs


def list_objects(prefix: str, storage: StorageConfig | None = None) -> list[ObjectInfo]:
    """Every object below ``prefix`` (a directory-like prefix), sorted by name."""
    if not is_s3(prefix):
        root = Path(prefix)
        if not root.is_dir():
            return []
        return [
            ObjectInfo(p.relative_to(root).as_posix(), str(p), p.stat().st_size)
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]
    loc = parse_s3(prefix)
    key_prefix = f"{loc.key}/" if loc.key else ""

    def page_all() -> list[ObjectInfo]:
        out = []
        pages = s3.client(storage).get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=loc.bucket, Prefix=key_prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(key_prefix) :]
                if name and not name.endswith("/"):
                    uri = S3Location(loc.bucket, obj["Key"]).uri
                    out.append(ObjectInfo(name, uri, int(obj["Size"]), _clean_etag(obj["ETag"])))
        return sorted(out, key=lambda o: o.name)

    return s3.call("list", prefix, page_all, storage)


def _ordered(names: Iterable[str], last: tuple[str, ...]) -> list[str]:
    """Names sorted, with those whose basename is in ``last`` moved to the end."""
    return sorted(names, key=lambda n: (n.rsplit("/", 1)[-1] in last, n))


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
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"upload {root}: not a directory")
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    remote = {o.name: o for o in list_objects(uri, storage)} if skip_unchanged else {}
    todo = []
    for name in _ordered(files, last):
        have = remote.get(name)
        path = files[name]
        if have and have.size == path.stat().st_size and have.etag == file_etag(path, storage):
            continue
        todo.append(name)
    total = sum(files[n].stat().st_size for n in todo)
    with progress_bar(
        total=total, unit="B", unit_scale=True, desc=f"upload {uri}", leave=False
    ) as bar:
        for name in todo:
            upload_file(files[name], join(uri, name), storage, progress=bar.update)
    return len(todo)


def download_dir(
    uri: str, local_dir: str | os.PathLike[str], storage: StorageConfig | None = None
) -> int:
    """Mirror the prefix ``uri`` into ``local_dir``; unchanged files (same ETag) are kept.

    Returns how many files were downloaded. Local files that no longer exist remotely are
    removed. A prefix with no objects is an :class:`ObjectNotFoundError`.
    """
    root = Path(local_dir)
    objects = list_objects(uri, storage)
    if not objects:
        raise ObjectNotFoundError(f"download {uri}: no objects under this prefix")
    marker_path = root / CACHE_MARKER
    try:
        marker: dict[str, str] = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        marker = {}
    todo = [
        o
        for o in objects
        if marker.get(o.name) != o.etag
        or not (root / o.name).is_file()
        or (root / o.name).stat().st_size != o.size
    ]
    total = sum(o.size for o in todo)
    with progress_bar(
        total=total, unit="B", unit_scale=True, desc=f"download {uri}", leave=False
    ) as bar:
        for obj in todo:
            download_to(obj.uri, root / obj.name, storage, progress=bar.update)
            marker[obj.name] = obj.etag or ""
    wanted = {o.name for o in objects}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and name != CACHE_MARKER and name not in wanted:
            path.unlink()
            marker.pop(name, None)
    marker = {k: v for k, v in marker.items() if k in wanted}
    with atomic_path(marker_path) as tmp:
        tmp.write_text(json.dumps(marker, indent=2, sort_keys=True))
    return len(todo)


def sync(src: str, dst: str, storage: StorageConfig | None = None) -> int:
    """Copy directory/prefix ``src`` to ``dst`` (one local, one s3); return files copied."""
    if is_s3(src) and is_s3(dst):
        raise StorageError(f"sync {src} -> {dst}: copy between two s3 prefixes is not supported")
    if is_s3(src):
        return download_dir(src, dst, storage)
    return upload_dir(src, dst, storage)


def localize(
    uri: str, cache_dir: str | os.PathLike[str], storage: StorageConfig | None = None
) -> Path:
    """A local directory holding the data at ``uri``.

    A local path is returned as is. An ``s3://bucket/prefix`` is mirrored into
    ``cache_dir/bucket/prefix`` (only changed objects are fetched on later calls) and that
    directory is returned.
    """
    if not is_s3(uri):
        return Path(uri)
    loc = parse_s3(uri)
    target = (
        Path(cache_dir, loc.bucket, *loc.key.split("/")) if loc.key else Path(cache_dir, loc.bucket)
    )
    download_dir(uri, target, storage)
    return target


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
    if is_s3(uri):
        upload_dir(src, uri, storage)
        return uri
    if Path(uri).resolve() != src.resolve():
        with atomic_dir(uri) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    return uri
