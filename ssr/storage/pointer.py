"""The ``latest.json`` pointer: which resume checkpoint in a directory is complete and newest.

Protocol (the same for a local directory and an ``s3://`` prefix)::

    <dir>/resume/e0003-s00000120-1a2b3c4d.pth   checkpoint bytes, uploaded completely first
    <dir>/latest.json                           written LAST, names the object above

The checkpoint key contains its epoch, global step and the start of its sha256, so an object
the pointer names is never overwritten with different bytes. Readers trust only the pointer and
verify size and sha256 before using the bytes. The pointer is replaced with a conditional write
(``If-Match`` on the ETag this writer last saw, ``If-None-Match: *`` for the first one): if
another writer moved it in between, :class:`PointerConflictError` is raised (no clobbering).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ssr.config import StorageConfig
from ssr.errors import CheckpointError, StorageError
from ssr.storage import objects
from ssr.storage.backend import ObjectNotFoundError, PreconditionFailedError
from ssr.storage.uri import join

log = logging.getLogger(__name__)

POINTER_NAME = "latest.json"
RESUME_PREFIX = "resume"
POINTER_VERSION = 1


class PointerConflictError(StorageError):
    """Another writer replaced ``latest.json`` since this writer last read or wrote it."""


@dataclass(frozen=True)
class Pointer:
    """The content of ``latest.json``; ``checkpoint`` is relative to the directory."""

    checkpoint: str
    epoch: int
    global_step: int
    sha256: str
    size: int
    run_ids: dict[str, str] = field(default_factory=dict)
    written_at: str = ""
    version: int = POINTER_VERSION

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, uri: str) -> Pointer:
        """Parse pointer bytes; anything malformed is a CheckpointError naming ``uri``."""
        try:
            raw = json.loads(data)
            if raw.get("version") != POINTER_VERSION:
                raise ValueError(f"unsupported version {raw.get('version')!r}")
            return cls(
                checkpoint=str(raw["checkpoint"]),
                epoch=int(raw["epoch"]),
                global_step=int(raw["global_step"]),
                sha256=str(raw["sha256"]),
                size=int(raw["size"]),
                run_ids={str(k): str(v) for k, v in (raw.get("run_ids") or {}).items()},
                written_at=str(raw.get("written_at", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{uri}: not a valid checkpoint pointer: {exc}") from None


def pointer_uri(directory: str) -> str:
    """Where the pointer of ``directory`` lives."""
    return join(directory, POINTER_NAME)


def read_pointer(
    directory: str, storage: StorageConfig | None = None
) -> tuple[Pointer, str] | None:
    """The pointer of ``directory`` and its ETag, or None when there is none yet."""
    uri = pointer_uri(directory)
    try:
        data, etag = objects.read_bytes_etag(uri, storage)
    except ObjectNotFoundError:
        return None
    return Pointer.from_bytes(data, uri), etag


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(data: bytes, pointer: Pointer, uri: str) -> None:
    """Raise CheckpointError naming ``uri`` unless ``data`` has the pointer's size and sha256."""
    if len(data) != pointer.size:
        raise CheckpointError(
            f"{uri}: truncated or wrong checkpoint: {len(data)} bytes, pointer says {pointer.size}"
        )
    digest = sha256_hex(data)
    if digest != pointer.sha256:
        raise CheckpointError(
            f"{uri}: corrupt checkpoint: sha256 {digest[:12]}..., pointer says "
            f"{pointer.sha256[:12]}..."
        )


def load_latest(
    directory: str, storage: StorageConfig | None = None
) -> tuple[Pointer, bytes] | None:
    """The newest complete checkpoint of ``directory`` as verified bytes, or None if none yet."""
    found = read_pointer(directory, storage)
    if found is None:
        return None
    pointer, _ = found
    uri = join(directory, pointer.checkpoint)
    try:
        data = objects.read_bytes(uri, storage)
    except ObjectNotFoundError:
        raise CheckpointError(f"{uri}: named by {pointer_uri(directory)} but missing") from None
    verify(data, pointer, uri)
    return pointer, data


class CheckpointPublisher:
    """Writes resume checkpoints into ``directory`` and moves ``latest.json`` to each one.

    Create it when a run starts (it reads the current pointer's ETag, taking over the
    directory); each :meth:`publish` uploads the checkpoint completely, then replaces the
    pointer conditionally, then deletes resume objects older than the newest ``keep``.
    """

    def __init__(self, directory: str, storage: StorageConfig | None = None, keep: int = 2) -> None:
        self.directory = directory
        self.storage = storage
        self.keep = max(1, keep)
        found = read_pointer(directory, storage)
        self._etag: str | None = found[1] if found else None

    def publish(
        self,
        data: bytes,
        *,
        epoch: int,
        global_step: int,
        run_ids: Mapping[str, str] | None = None,
    ) -> Pointer:
        """Upload ``data`` as the newest resume checkpoint; the pointer moves only afterwards."""
        digest = sha256_hex(data)
        key = f"{RESUME_PREFIX}/e{epoch:04d}-s{global_step:08d}-{digest[:8]}.pth"
        objects.write_bytes(join(self.directory, key), data, self.storage)
        pointer = Pointer(
            checkpoint=key,
            epoch=epoch,
            global_step=global_step,
            sha256=digest,
            size=len(data),
            run_ids=dict(run_ids or {}),
            written_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        self._write_pointer(pointer)
        self._prune(keep_key=key)
        return pointer

    def _write_pointer(self, pointer: Pointer) -> None:
        uri = pointer_uri(self.directory)
        body = pointer.to_bytes()
        try:
            self._etag = objects.write_bytes(
                uri,
                body,
                self.storage,
                if_none_match=self._etag is None,
                if_match=self._etag,
            )
        except PreconditionFailedError:
            found = read_pointer(self.directory, self.storage)
            if found is not None and found[0] == pointer:
                self._etag = found[1]  # our own write landed; its response was lost and retried
                return
            other = f"now names {found[0].checkpoint}" if found else "was deleted"
            raise PointerConflictError(
                f"{uri}: another writer updated the pointer ({other}); refusing to overwrite it. "
                "Is a second training run using the same checkpoint_dir?"
            ) from None

    def _prune(self, keep_key: str) -> None:
        prefix = join(self.directory, RESUME_PREFIX)
        try:
            names = sorted(o.name for o in objects.list_objects(prefix, self.storage))
            others = [n for n in names if f"{RESUME_PREFIX}/{n}" != keep_key]
            for name in others[: max(0, len(others) - (self.keep - 1))]:
                objects.delete(join(prefix, name), self.storage)
        except StorageError as exc:  # pruning is housekeeping; the checkpoint is safe already
            log.warning("could not prune old checkpoints in %s: %s", prefix, exc)
