"""Local paths and ``s3://`` URIs behind one small API, plus the checkpoint pointer protocol.

Data and pipeline code need only :func:`localize` (an s3 prefix -> a local cache directory)
and :func:`publish` (a finished local directory -> an s3 prefix or local path).
"""

from ssr.storage.backend import ObjectNotFoundError, PreconditionFailedError
from ssr.storage.objects import (
    ObjectInfo,
    copy,
    delete,
    download_dir,
    download_to,
    exists,
    list_objects,
    localize,
    publish,
    read_bytes,
    stat,
    upload_dir,
    upload_file,
    write_bytes,
)
from ssr.storage.pointer import (
    CheckpointPublisher,
    Pointer,
    PointerConflictError,
    load_latest,
    read_pointer,
)
from ssr.storage.uri import S3Location, basename, is_s3, join, parse_s3

__all__ = [
    "CheckpointPublisher",
    "ObjectInfo",
    "ObjectNotFoundError",
    "Pointer",
    "PointerConflictError",
    "PreconditionFailedError",
    "S3Location",
    "basename",
    "copy",
    "delete",
    "download_dir",
    "download_to",
    "exists",
    "is_s3",
    "join",
    "list_objects",
    "load_latest",
    "localize",
    "parse_s3",
    "publish",
    "read_bytes",
    "read_pointer",
    "stat",
    "upload_dir",
    "upload_file",
    "write_bytes",
]
