"""A data set as MLflow records it: a ``Dataset`` entity logged as a run's input.

MLflow keeps one dataset per experiment by (name, digest) and shows it on every run that used
it ("Datasets used"), with its context tag, source and profile. Its digest column holds at most
36 characters, so the fingerprint is cut to its first 36 hex digits there (144 bits: unique in
practice); the whole fingerprint is in the profile and in the runs' ``data.fingerprint`` tag.
The source is MLflow's own ``{"uri": ...}`` JSON, so ``mlflow.data.get_source(...)`` resolves it.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from ssr.tracking.lineage import DataSet

DIGEST_CHARS = 36  # MLflow's limit on a dataset digest
NAME_CHARS = 500  # MLflow's limit on a dataset name


def mlflow_digest(fingerprint: str) -> str:
    """The fingerprint as an MLflow dataset digest (its first :data:`DIGEST_CHARS` characters)."""
    return fingerprint[:DIGEST_CHARS]


def dataset_entity(data: DataSet) -> Dataset:
    """``data`` as MLflow's ``Dataset`` entity (also what metrics name as their data set)."""
    profile: dict[str, Any] = {"fingerprint": data.digest, **dict(data.profile)}
    return Dataset(
        name=data.name[:NAME_CHARS],
        digest=mlflow_digest(data.digest),
        source_type=data.source_type,
        source=json.dumps({"uri": data.source}),
        profile=json.dumps(profile, sort_keys=True),
    )


def dataset_input(data: DataSet) -> DatasetInput:
    """``data`` as a run input with its context tag (training, evaluation)."""
    return DatasetInput(dataset_entity(data), tags=[InputTag(MLFLOW_DATASET_CONTEXT, data.context)])
