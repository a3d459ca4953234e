"""Whole directories: upload a local tree to a prefix, or mirror a prefix into a local tree."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from ssr.errors import StorageError
from ssr.fsutil import atomic_path
from ssr.progress import progress_bar
from ssr.storage.backend import Backend, ObjectNotFoundError
from ssr.storage.uri import join

CACHE_MARKER = ".ssr-localized.json"
PUBLISH_LAST = ("manifest.json", "latest.json")


def _ordered(names: Iterable[str], last: tuple[str, ...]) -> list[str]:
    """Names sorted, with those whose basename is in ``last`` moved to the end."""
    return sorted(names, key=lambda n: (n.rsplit("/", 1)[-1] in last, n))


def upload_dir(
    backend: Backend,
    root: Path,
    uri: str,
    *,
    last: tuple[str, ...] = PUBLISH_LAST,
    skip_unchanged: bool = True,
) -> int:
    """Upload every file below ``root`` to the prefix ``uri``; return how many were sent.

    Files named in ``last`` go up after all others; files whose size and ETag already match
    the remote object are skipped.
    """
    if not root.is_dir():
        raise StorageError(f"upload {root}: not a directory")
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    remote = {o.name: o for o in backend.list_objects(uri)} if skip_unchanged else {}
    todo = []
    for name in _ordered(files, last):
        have, path = remote.get(name), files[name]
        if (
            have
            and have.etag is not None
            and have.size == path.stat().st_size
            and have.etag == backend.file_etag(path)
        ):
            continue
        todo.append(name)
    total = sum(files[n].stat().st_size for n in todo)
    with progress_bar(
        total=total, unit="B", unit_scale=True, desc=f"upload {uri}", leave=False
    ) as bar:
        for name in todo:
            backend.upload_file(files[name], join(uri, name), progress=bar.update)
    return len(todo)


def download_dir(backend: Backend, uri: str, root: Path) -> int:
    """Mirror the prefix ``uri`` into ``root``, keeping unchanged files; return how many came.

    Local files that no longer exist remotely are removed. A prefix with no objects is an
    :class:`ObjectNotFoundError`.
    """
    objects = backend.list_objects(uri)
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
            backend.download_to(obj.uri, root / obj.name, progress=bar.update)
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
