"""The Kubernetes Secrets that hold the pipeline's credentials (see ``k8s/``).

One table for the KFP pipeline (``kfp.kubernetes.use_secret_as_env``) and the TrainJob
launcher (``valueFrom.secretKeyRef``): credentials reach pods only by reference, never as values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

S3 = "ssr-s3-credentials"
MLFLOW = "ssr-mlflow-credentials"
WANDB = "ssr-wandb-credentials"

# secret name -> {key in the secret: environment variable}
SECRETS: dict[str, dict[str, str]] = {
    S3: {
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    },
    MLFLOW: {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
    },
    WANDB: {"WANDB_API_KEY": "WANDB_API_KEY"},
}
# W&B is optional: without its secret the steps log to W&B offline.
OPTIONAL: frozenset[str] = frozenset({WANDB})


def secret_env(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Kubernetes ``EnvVar`` objects that read each key of the named secrets (all by default)
    through ``valueFrom.secretKeyRef``."""
    env: list[dict[str, Any]] = []
    for name in SECRETS if names is None else names:
        for key, var in SECRETS[name].items():
            ref: dict[str, Any] = {"name": name, "key": key}
            if name in OPTIONAL:
                ref["optional"] = True
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    return env
