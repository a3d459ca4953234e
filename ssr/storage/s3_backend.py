"""The ``s3://`` backend: objects appear only when ``PutObject`` or ``CompleteMultipartUpload``
succeeds (objects at or above ``storage.multipart_threshold_mb`` go up in parts of that size)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from boto3.s3.transfer import TransferConfig

from ssr.config import StorageConfig
from ssr.fsutil import atomic_path
from ssr.storage import dirs, s3
from ssr.storage.backend import (
    MB,
    ObjectInfo,
    ObjectNotFoundError,
    Progress,
    bytes_etag_multipart,
    file_etag,
)
from ssr.storage.uri import S3Location, parse_s3

log = logging.getLogger(__name__)


def _clean_etag(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def transfer_config(storage: StorageConfig) -> TransferConfig:
    """Multipart settings: parts of ``multipart_threshold_mb`` once an object reaches that size."""
    size = storage.multipart_threshold_mb * MB
    return TransferConfig(
        multipart_threshold=size, multipart_chunksize=size, max_concurrency=4, use_threads=True
    )


class S3Backend:
    """One bucket endpoint; every request retries on its own through botocore."""

    def __init__(self, storage: StorageConfig | None = None) -> None:
        self.storage = storage or StorageConfig()

    @property
    def client(self) -> Any:
        return s3.client(self.storage)

    def stat(self, uri: str) -> ObjectInfo | None:
        loc = parse_s3(uri)
        try:
            with s3.errors("stat", uri, self.storage):
                head = self.client.head_object(Bucket=loc.bucket, Key=loc.key)
        except ObjectNotFoundError:
            return None
        name = loc.key.rsplit("/", 1)[-1]
        return ObjectInfo(name, uri, int(head["ContentLength"]), _clean_etag(head["ETag"]))

    def read_bytes_etag(self, uri: str) -> tuple[bytes, str]:
        """A body cut off after the response arrived is past botocore's retries: GET again."""
        loc = parse_s3(uri)
        attempts = self.storage.max_attempts
        for attempt in range(1, attempts + 1):
            with s3.errors("read", uri, self.storage):
                resp = self.client.get_object(Bucket=loc.bucket, Key=loc.key)
                try:
                    return resp["Body"].read(), _clean_etag(resp["ETag"]) or ""
                except s3.STREAM_ERRORS as exc:
                    if attempt == attempts:
                        raise
                    log.warning("read %s: %s; reading again", uri, s3.describe(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Conditions are evaluated atomically by the server (one ``PutObject``)."""
        loc = parse_s3(uri)
        conditional = if_none_match or if_match is not None
        if not conditional and len(data) >= self.storage.multipart_threshold_mb * MB:
            self._upload_fileobj(lambda: io.BytesIO(data), loc, progress)
            return bytes_etag_multipart(data, self.storage.multipart_threshold_mb)
        kwargs: dict[str, Any] = {"Bucket": loc.bucket, "Key": loc.key, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match.strip(chr(34))}"'
        with s3.errors("write", uri, self.storage):
            etag = _clean_etag(self.client.put_object(**kwargs)["ETag"]) or ""
        if progress:
            progress(len(data))
        return etag

    def _upload_fileobj(
        self, opener: Callable[[], BinaryIO], loc: S3Location, progress: Progress | None
    ) -> None:
        config = transfer_config(self.storage)
        with s3.errors("upload", loc.uri, self.storage), opener() as fh:
            self.client.upload_fileobj(fh, loc.bucket, loc.key, Config=config, Callback=progress)

    def upload_file(self, src: Path, uri: str, progress: Progress | None = None) -> None:
        self._upload_fileobj(lambda: src.open("rb"), parse_s3(uri), progress)

    def download_to(self, uri: str, dest: Path, progress: Progress | None = None) -> None:
        loc = parse_s3(uri)
        config = transfer_config(self.storage)
        with (
            s3.errors("download", uri, self.storage),
            atomic_path(dest) as tmp,
            open(tmp, "wb") as fh,
        ):
            self.client.download_fileobj(loc.bucket, loc.key, fh, Config=config, Callback=progress)

    def copy(self, src: str, dst: str) -> None:
        """A server-side copy (multipart above the threshold): no bytes pass through here."""
        source, target = parse_s3(src), parse_s3(dst)
        with s3.errors("copy", src, self.storage):
            self.client.copy(
                {"Bucket": source.bucket, "Key": source.key},
                target.bucket,
                target.key,
                Config=transfer_config(self.storage),
            )

    def delete(self, uri: str) -> None:
        loc = parse_s3(uri)
        with s3.errors("delete", uri, self.storage):
            self.client.delete_object(Bucket=loc.bucket, Key=loc.key)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        loc = parse_s3(prefix)
        key_prefix = f"{loc.key}/" if loc.key else ""
        out = []
        with s3.errors("list", prefix, self.storage):
            pages = self.client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=loc.bucket, Prefix=key_prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(key_prefix) :]
                    if name and not name.endswith("/"):
                        uri = S3Location(loc.bucket, obj["Key"]).uri
                        etag = _clean_etag(obj["ETag"])
                        out.append(ObjectInfo(name, uri, int(obj["Size"]), etag))
        return sorted(out, key=lambda o: o.name)

    def file_etag(self, path: Path) -> str | None:
        return file_etag(path, self.storage.multipart_threshold_mb)

    def localize(self, uri: str, cache_dir: Path) -> Path:
        """Mirror ``s3://bucket/prefix`` into ``cache_dir/bucket/prefix`` (changed objects only)."""
        loc = parse_s3(uri)
        target = Path(cache_dir, loc.bucket, *(loc.key.split("/") if loc.key else []))
        dirs.download_dir(self, uri, target)
        return target

    def publish(self, src: Path, uri: str) -> None:
        """Upload changed files, ``manifest.json``/``latest.json`` last."""
        dirs.upload_dir(self, src, uri)
