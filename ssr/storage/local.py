"""The local-filesystem backend: files are written to a temp name, fsynced and renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ssr.errors import StorageError
from ssr.fsutil import atomic_dir, atomic_path
from ssr.storage.backend import (
    ObjectInfo,
    ObjectNotFoundError,
    PreconditionFailedError,
    Progress,
    md5_hex,
)


class LocalBackend:
    """Paths on this machine; ETags are the MD5 of the content, as S3 computes them."""

    def stat(self, uri: str) -> ObjectInfo | None:
        path = Path(uri)
        if not path.is_file():
            return None
        return ObjectInfo(path.name, str(path), path.stat().st_size)

    def read_bytes_etag(self, uri: str) -> tuple[bytes, str]:
        try:
            data = Path(uri).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"read {uri}: no such file") from None
        except OSError as exc:
            raise StorageError(f"read {uri}: {exc}") from None
        return data, md5_hex(data)

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Conditions are checked just before the rename (good for one machine, not a lock)."""
        path = Path(uri)
        if if_none_match and path.exists():
            raise PreconditionFailedError(f"write {uri}: exists already (If-None-Match: *)")
        if if_match is not None:
            if not path.exists():
                raise PreconditionFailedError(f"write {uri}: does not exist (If-Match)")
            if md5_hex(path.read_bytes()) != if_match.strip('"'):
                raise PreconditionFailedError(f"write {uri}: changed since it was read (If-Match)")
        with atomic_path(uri) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return md5_hex(data)

    def upload_file(self, src: Path, uri: str, progress: Progress | None = None) -> None:
        with atomic_path(uri) as tmp:
            shutil.copyfile(src, tmp)
        if progress:
            progress(src.stat().st_size)

    def download_to(self, uri: str, dest: Path, progress: Progress | None = None) -> None:
        if not Path(uri).is_file():
            raise ObjectNotFoundError(f"download {uri}: no such file")
        with atomic_path(dest) as tmp:
            shutil.copyfile(uri, tmp)

    def copy(self, src: str, dst: str) -> None:
        if not Path(src).is_file():
            raise ObjectNotFoundError(f"copy {src}: no such file")
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(uri).unlink()

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        root = Path(prefix)
        if not root.is_dir():
            return []
        return [
            ObjectInfo(p.relative_to(root).as_posix(), str(p), p.stat().st_size)
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]

    def file_etag(self, path: Path) -> str | None:
        return None  # local listings carry no ETag, so nothing is ever skipped as unchanged

    def localize(self, uri: str, cache_dir: Path) -> Path:
        return Path(uri)

    def publish(self, src: Path, uri: str) -> None:
        """Replace the directory ``uri`` atomically with a copy (nothing to do if it is src)."""
        if Path(uri).resolve() != src.resolve():
            with atomic_dir(uri) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
