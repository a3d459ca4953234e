"""Register an evaluated checkpoint as a new version of the MLflow registered model.

One MLflow run (``register-<checkpoint>``, in the tracking experiment) receives:

* ``model``: the raw-EMG pyfunc (:class:`~ssr.registry.pyfunc_model.EmgClassifier`), logged
  as code (:data:`~ssr.registry.safe_load.MODEL_CODE`, nothing pickled) with the weights as
  safetensors, the data set manifest (preprocessing travels with it) and the ``ssr`` package
  itself (MLflow ``code_paths``); its requirements are public packages only
  (``serving-requirements.txt``, pinned to the versions installed here). This is what the
  registry version points at;
* ``pytorch-model``: the network in MLflow's PyTorch flavour, as a ``torch.export`` (pt2)
  program with inputs ``x`` (B, T, C, F) and ``padding_mask`` (B, T)
  (when ``registry.log_pytorch_model``);
* ``evaluation/``: the ``metrics.json`` and ``predictions.json`` of the test evaluation;
* lineage: the data set the checkpoint was trained on (and the test data set, when another)
  as dataset inputs with the fingerprint as digest (:mod:`ssr.tracking.lineage`); the test
  metrics name the pyfunc model and that data set, so MLflow's logged-model page lists it.

The new version gets the alias ``challenger``, tags with its task, test metrics, data
fingerprint and source (and those of the training data), config, git commit, pipeline run id
and links to the MLflow and W&B runs, and a one-line description of its test scores.
``task: words`` records accuracy and macro F1; ``task: sentences`` the WER and CER of the LM
decoding, the greedy WER and the baseline's WER.

With a pipeline run id, registering is idempotent: when a version of the model already carries
that ``pipeline_run_id`` tag (the same run's earlier attempt), it is returned as is; nothing is
logged or registered again and no alias moves.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Dataset
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ssr.config import Config
from ssr.data.fingerprint import feature_hash
from ssr.data.processed import ProcessedSplit
from ssr.errors import DataError, RegistryError
from ssr.evaluation import read_metrics
from ssr.fsutil import read_json_object
from ssr.registry.packaging import (
    SERVING_REQUIREMENTS,
    example_input,
    log_classifier,
    log_pytorch,
    pip_requirements,
    pyfunc_signature,
    sentence_artifacts,
    serving_distributions,
)
from ssr.registry.promote import CHALLENGER
from ssr.registry.pyfunc_model import MANIFEST, MODEL_INFO, WEIGHTS, EmgClassifier
from ssr.tracking.context import git_commit
from ssr.tracking.lineage import TRAINING, DataSet, model_data, source_uri
from ssr.tracking.mlflow_dataset import dataset_entity, dataset_input
from ssr.tracking.store import ensure_experiment, open_client
from ssr.training.checkpoint import check_features, load_checkpoint, restore_model

__all__ = [  # packaging names stay importable from here
    "SERVING_REQUIREMENTS",
    "ModelVersionInfo",
    "connect",
    "example_input",
    "find_run_version",
    "log_classifier",
    "pip_requirements",
    "read_evaluation",
    "register_model",
    "serving_distributions",
    "tracking_uri",
]

log = logging.getLogger(__name__)

RUN_ID_TAG = "pipeline_run_id"
TAG_VALUE_LIMIT = 5000  # MLflow's limit on a model version tag value


@dataclass
class ModelVersionInfo:
    """A registered version: ``models:/<name>/<version>`` and what was recorded with it."""

    name: str
    version: str
    run_id: str
    model_uri: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    existing: bool = False  # registered earlier by the same pipeline run, returned unchanged


def tracking_uri(cfg: Config) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.mlflow.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.mlflow.tracking_uri


def connect(cfg: Config) -> MlflowClient:
    """Point MLflow (tracking and registry) at the configured server; return a client."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client: MlflowClient = open_client(uri)  # a local SQLite store is created/migrated under a lock
    return client


def read_evaluation(eval_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict]]:
    """``metrics.json`` (checked by :func:`ssr.evaluation.read_metrics`) and the per-utterance
    predictions written by ``ssr evaluate``; DataError naming the file when one is missing or
    malformed, or the evaluation was not of the test split."""
    root = Path(eval_dir)
    for name in ("metrics.json", "predictions.json"):
        if not (root / name).is_file():
            raise DataError(f"{root / name}: missing; run `ssr evaluate --split test` first")
    metrics_path, predictions_path = root / "metrics.json", root / "predictions.json"
    metrics = read_metrics(metrics_path)
    if metrics.get("split", "test") != "test":
        raise DataError(f"{metrics_path}: evaluated on {metrics['split']!r}, not test")
    predictions = read_json_object(predictions_path)
    rows = predictions.get("predictions", [])
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise DataError(f"{predictions_path}: 'predictions' must be a list of objects")
    return metrics, rows


def _truncate(text: str, limit: int = TAG_VALUE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "...[truncated]"


def evaluation_scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline test scores of an evaluation, by the name they are recorded under
    (``test.<name>`` tags, ``test/<name>`` run metrics)."""
    if metrics.get("task") != "sentences":
        return {k: float(metrics[k]) for k in ("accuracy", "macro_f1", "loss")}
    scores = {k: float(metrics[k]) for k in ("wer", "cer", "loss")}
    for name, part in (("greedy_wer", "greedy"), ("baseline_wer", "baseline")):
        value = (metrics.get(part) or {}).get("wer")
        if value is not None:
            scores[name] = float(value)
    return scores


def describe(task: str, scores: dict[str, float], num_samples: int) -> str:
    """The model version's description: its test scores in one line."""
    if task != "sentences":
        return (
            f"task words; test accuracy {scores['accuracy']:.4f}, macro F1 "
            f"{scores['macro_f1']:.4f} on {num_samples} utterances"
        )
    text = (
        f"task sentences; test WER {scores['wer']:.4f}, CER {scores['cer']:.4f} "
        f"(beam search with lexicon and language model)"
    )
    if "greedy_wer" in scores:
        text += f", greedy WER {scores['greedy_wer']:.4f}"
    if "baseline_wer" in scores:
        text += f", linear baseline WER {scores['baseline_wer']:.4f}"
    return f"{text} on {num_samples} utterances"


def _checkpoint_parts(
    checkpoint: str, split: ProcessedSplit
) -> tuple[torch.nn.Module, Config, list[str], dict[str, Any]]:
    """Model, training config, labels and the checkpoint's state; refuses a checkpoint
    trained on other features than ``split``'s data set."""
    state = load_checkpoint(checkpoint)
    check_features(state, split.manifest, checkpoint, str(split.root))
    model, train_cfg, labels = restore_model(state, checkpoint)
    return model.eval(), train_cfg, labels, state


def find_run_version(
    client: MlflowClient, name: str, pipeline_run_id: str
) -> ModelVersionInfo | None:
    """The version of ``name`` that pipeline run ``pipeline_run_id`` registered (the oldest,
    should there be several), or None."""
    if "'" in pipeline_run_id or "'" in name:
        raise RegistryError(f"{name!r} / {pipeline_run_id!r}: quotes are not allowed")
    query = f"name = '{name}' and tags.{RUN_ID_TAG} = '{pipeline_run_id}'"
    try:
        found = client.search_model_versions(query)
    except MlflowException as exc:
        raise RegistryError(
            f"{name}: cannot search versions of run {pipeline_run_id}: {exc}"
        ) from None
    if not found:
        return None
    mv = min(found, key=lambda v: int(v.version))
    return ModelVersionInfo(
        name,
        str(mv.version),
        str(mv.run_id),
        f"models:/{name}/{mv.version}",
        list(mv.aliases or []),
        dict(mv.tags or {}),
        existing=True,
    )


def register_model(
    cfg: Config,
    checkpoint: str,
    eval_dir: str,
    *,
    pipeline_run_id: str | None = None,
    model_name: str | None = None,
    client: MlflowClient | None = None,
) -> ModelVersionInfo:
    """Log the checkpoint as pyfunc + PyTorch models, register the pyfunc, alias it ``challenger``.

    ``cfg.data.processed_dir`` must be the data set the checkpoint was evaluated on (its
    manifest and fingerprint are shipped with the model). With ``pipeline_run_id``, a version
    that run registered before is returned instead (``existing=True``), aliases untouched.
    """
    from safetensors.torch import save_file

    metrics, predictions = read_evaluation(eval_dir)  # before any server or checkpoint work
    client = client or connect(cfg)
    name = model_name or cfg.registry.model_name
    if pipeline_run_id:
        earlier = find_run_version(client, name, pipeline_run_id)
        if earlier is not None:
            log.info(
                "pipeline run %s already registered %s version %s; not registering again",
                pipeline_run_id,
                name,
                earlier.version,
            )
            return earlier
    split = ProcessedSplit(cfg.data.processed_dir, "test")
    model, train_cfg, labels, state = _checkpoint_parts(checkpoint, split)
    run_ids = dict(state.get("tracking") or {})
    task = str(metrics.get("task", "words"))
    if train_cfg.task != task or split.task != task:
        raise DataError(
            f"{eval_dir}: a {task} evaluation, but the checkpoint is a {train_cfg.task} model "
            f"and {cfg.data.processed_dir} a {split.task} data set"
        )
    if split.label_names != labels:
        raise DataError(
            f"{cfg.data.processed_dir}: labels {split.label_names} differ from "
            f"the checkpoint's {labels}"
        )
    if predictions and len(predictions) != len(split):
        raise DataError(
            f"{eval_dir}: {len(predictions)} predictions but the test split of "
            f"{cfg.data.processed_dir} has {len(split)} utterances"
        )

    fingerprint = str(split.manifest.get("fingerprint", "unknown"))
    # lineage: the data it was trained on (the checkpoint's) and, if other, tested on
    datasets = model_data(
        train_cfg.data.processed_dir,
        str(state.get("data_fingerprint") or ""),
        cfg.data.processed_dir,
        split.manifest,
    )

    scores = evaluation_scores(metrics)
    num_samples = metrics.get("num_samples", len(split))
    tags = {
        "task": task,
        **{f"test.{k}": f"{v:.6g}" for k, v in scores.items()},
        "test.num_samples": str(num_samples),
        "data.fingerprint": fingerprint,
        "data.feature_hash": feature_hash(split.manifest),
        "config": _truncate(
            json.dumps(train_cfg.model_dump(), sort_keys=True, separators=(",", ":"))
        ),
        "git_commit": git_commit(),
        RUN_ID_TAG: pipeline_run_id or "none",
        "checkpoint": os.path.basename(checkpoint),
        "labels": _truncate(json.dumps(labels)),
    }
    if run_ids.get("mlflow"):
        tags["train.mlflow_run_id"] = str(run_ids["mlflow"])
    if run_ids.get("wandb"):
        tags["train.wandb_run"] = str(run_ids["wandb"])
    tags.update(_data_tags(cfg.data.processed_dir, datasets))

    experiment = cfg.tracking.mlflow.experiment
    mlflow.set_experiment(experiment_id=ensure_experiment(client, experiment))
    with tempfile.TemporaryDirectory(prefix="ssr-register-") as tmp:
        tmpdir = Path(tmp)
        weights = tmpdir / "model.safetensors"
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
        info_path = tmpdir / "model_info.json"
        info_path.write_text(json.dumps({"model": train_cfg.model.model_dump(), "labels": labels}))
        manifest_path = tmpdir / "manifest.json"
        manifest_path.write_text(json.dumps(split.manifest, sort_keys=True))
        artifacts = {
            WEIGHTS: str(weights),
            MODEL_INFO: str(info_path),
            MANIFEST: str(manifest_path),
            # task sentences: lexicon, language model and decoding settings ({} for words)
            **sentence_artifacts(state, tmpdir, checkpoint),
        }
        example = example_input(split)
        signature = pyfunc_signature(EmgClassifier(), artifacts, example)
        run_name = f"register-{Path(checkpoint).stem}"
        with mlflow.start_run(run_name=run_name) as run:
            mlflow.set_tags(
                {"ssr.job": "register", **{k: v for k, v in tags.items() if k != "config"}}
            )
            tested_on = _record_data(client, run.info.run_id, datasets)
            mlflow.log_artifact(str(Path(eval_dir) / "metrics.json"), "evaluation")
            mlflow.log_artifact(str(Path(eval_dir) / "predictions.json"), "evaluation")
            pyfunc_info = log_classifier(artifacts, signature=signature, input_example=example)
            # the scores name the model and the data tested on: the UI's logged model lists
            # that data set under "Datasets used"
            mlflow.log_metrics(
                {f"test/{k}": v for k, v in scores.items()},
                model_id=pyfunc_info.model_id,
                dataset=tested_on,
            )
            if cfg.registry.log_pytorch_model:
                log_pytorch(model, split, train_cfg, len(labels))
            run_id = run.info.run_id
    tags["mlflow.run_id"] = run_id
    tags["mlflow.run_url"] = _run_url(client, run.info.experiment_id, run_id)
    version = _create_version(name, pyfunc_info.model_uri, tags)
    client.update_model_version(name, version, describe(task, scores, int(num_samples)))
    client.set_registered_model_alias(name, CHALLENGER, version)
    log.info("registered %s version %s (run %s) as %s", name, version, run_id, CHALLENGER)
    return ModelVersionInfo(name, version, run_id, f"models:/{name}/{version}", [CHALLENGER], tags)


def _data_tags(processed_dir: str, datasets: list[DataSet]) -> dict[str, str]:
    """``data.source`` beside ``data.fingerprint`` (the data set registered and tested with),
    and ``train.data.*``: the data set the checkpoint was trained on, when it names one."""
    tags = {"data.source": _truncate(source_uri(processed_dir))}
    for data in datasets:
        if data.context == TRAINING:
            tags["train.data.fingerprint"] = data.digest
            tags["train.data.source"] = _truncate(data.source)
    return tags


def _record_data(client: MlflowClient, run_id: str, datasets: list[DataSet]) -> Dataset | None:
    """Log ``datasets`` as inputs of the registering run; the entity its test scores name."""
    if not datasets:
        return None
    client.log_inputs(run_id, datasets=[dataset_input(d) for d in datasets])
    return dataset_entity(datasets[-1])


def _run_url(client: MlflowClient, experiment_id: str, run_id: str) -> str:
    uri = client.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return f"runs:/{run_id}"
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _create_version(name: str, source: str, tags: dict[str, str]) -> str:
    try:
        version = mlflow.register_model(source, name, tags=tags, await_registration_for=120)
    except MlflowException as exc:
        raise RegistryError(f"{name}: cannot create model version from {source}: {exc}") from None
    return str(version.version)
