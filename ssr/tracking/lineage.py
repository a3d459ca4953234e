"""Data lineage: the processed data set a run used, described once for every tracking backend.

A run records its data as a *data set* (MLflow: a dataset input; W&B: a ``dataset`` artifact)
named after the processed directory, identified by the processed data's fingerprint (content
of the raw recordings, from the manifest) and pointing at the directory's URI. The profile adds
what tells data sets apart at a glance: split sizes, labels, feature shape and feature hash.
Nothing here imports a backend, so training and evaluation pay no import cost for it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssr.redact import redact
from ssr.tracking.tracker import Tracker

log = logging.getLogger(__name__)

TRAINING = "training"
EVALUATION = "evaluation"
MAX_LABELS = 100  # labels listed in a profile; past this only their number (sentence units)


@dataclass(frozen=True)
class DataSet:
    """A data set as the trackers record it: ``digest`` is the full fingerprint."""

    name: str
    digest: str
    source: str
    context: str = TRAINING
    profile: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source_type(self) -> str:
        """``s3`` (or another URI scheme), else ``local``: MLflow's dataset source types."""
        scheme, sep, _ = self.source.partition("://")
        return scheme if sep and scheme else "local"


def source_uri(uri: str | os.PathLike[str]) -> str:
    """``uri`` as recorded: an absolute local path (a relative one means nothing elsewhere) or
    the remote URI as given, without a trailing slash, passwords redacted."""
    text = str(uri)
    if "://" in text:
        return redact(text.rstrip("/"))
    return str(Path(text).expanduser().resolve())


def dataset_name(uri: str | os.PathLike[str]) -> str:
    """The last path segment of ``uri`` (``data/processed`` -> ``processed``)."""
    text = str(uri).rstrip("/")
    return text.rsplit("/", 1)[-1].split("://")[-1] or "data"


def data_profile(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest says about the data at a glance (all JSON values): fingerprint, task,
    feature hash and shape, labels, and utterances and frames per split."""
    splits = manifest.get("splits")
    splits = splits if isinstance(splits, Mapping) else {}
    labels = manifest.get("labels")
    labels = list(labels) if isinstance(labels, list) else []
    profile: dict[str, Any] = {
        "fingerprint": str(manifest.get("fingerprint", "")),
        "task": str(manifest.get("task", "words")),
        "num_labels": len(labels),
        "utterances": {
            str(k): v.get("utterances") for k, v in splits.items() if isinstance(v, Mapping)
        },
        "frames": {str(k): v.get("frames") for k, v in splits.items() if isinstance(v, Mapping)},
    }
    if len(labels) <= MAX_LABELS:
        profile["labels"] = [str(label) for label in labels]
    for key in ("feature_hash", "num_channels", "input_size"):
        if key in manifest:
            profile[key] = manifest[key]
    return profile


def describe_processed(
    uri: str | os.PathLike[str], manifest: Mapping[str, Any], context: str = TRAINING
) -> DataSet | None:
    """The data set of processed directory ``uri`` with ``manifest``; None without a
    fingerprint (a manifest written before fingerprints: nothing to identify it by)."""
    fingerprint = manifest.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        log.warning("tracking: %s has no fingerprint; no data set recorded", uri)
        return None
    return DataSet(dataset_name(uri), fingerprint, source_uri(uri), context, data_profile(manifest))


def read_processed(
    uri: str | os.PathLike[str],
    local_dir: str | os.PathLike[str] | None = None,
    context: str = TRAINING,
) -> DataSet | None:
    """:func:`describe_processed` from the ``manifest.json`` in ``local_dir`` (default ``uri``:
    a remote data set is read from its local copy); None when it cannot be read."""
    path = Path(local_dir if local_dir is not None else uri) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("tracking: no data set recorded: %s unreadable (%s)", path, exc)
        return None
    return describe_processed(uri, manifest, context) if isinstance(manifest, dict) else None


def log_data(tracker: Tracker, data: DataSet | None) -> None:
    """Record ``data`` with ``tracker`` (nothing for None: the reason is logged already)."""
    if data is None:
        return
    tracker.log_dataset(
        data.name, data.digest, data.source, context=data.context, profile=data.profile
    )


def model_data(
    train_uri: str | os.PathLike[str] | None,
    train_fingerprint: str | None,
    eval_uri: str | os.PathLike[str],
    eval_manifest: Mapping[str, Any],
) -> list[DataSet]:
    """The data sets a registered model comes from: the one it was trained on (from its
    checkpoint) and, when that is another, the one it was tested on, last. The last is the one
    its test metrics name. A checkpoint without a fingerprint leaves only the tested one."""
    evaluated = describe_processed(eval_uri, eval_manifest, EVALUATION)
    if not train_fingerprint:
        log.warning("tracking: the checkpoint names no training data; only the test data recorded")
        return [evaluated] if evaluated else []
    if evaluated is not None and evaluated.digest == train_fingerprint:
        uri = train_uri or eval_uri  # the same data: named as training saw it
        return [
            DataSet(
                dataset_name(uri), train_fingerprint, source_uri(uri), TRAINING, evaluated.profile
            )
        ]
    trained = DataSet(
        dataset_name(train_uri or "data"),
        train_fingerprint,
        source_uri(train_uri) if train_uri else "unknown",
        TRAINING,
        {"fingerprint": train_fingerprint},
    )
    return [trained, evaluated] if evaluated else [trained]
