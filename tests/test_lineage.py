"""Data lineage: training, evaluation and registration record the processed data set they used
(MLflow dataset inputs with the fingerprint as digest, W&B ``dataset`` artifacts), against the
session's real MLflow server and offline W&B files."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers_data import tiny_overrides
from helpers_serving import server_env
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from servers import free_port
from wandb_offline import offline_runs, read_records

from ssr.cli import main
from ssr.config import load_config
from ssr.data.preprocess import run_preprocess
from ssr.data.synth import SynthOptions, generate
from ssr.registry.register import register_model
from ssr.tracking.lineage import EVALUATION, TRAINING, DataSet, describe_processed, model_data
from ssr.tracking.mlflow_backend import MlflowTracker
from ssr.tracking.wandb_backend import WandbTracker
from ssr.training.checkpoint import load_checkpoint

# a real sha256 fingerprint (64 hex digits): MLflow's digest keeps the first 36
FINGERPRINT = hashlib.sha256(b"lineage").hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic raw EMG set, preprocessed: a real manifest and fingerprint (registering
    rebuilds the preprocessing from it)."""
    root = tmp_path_factory.mktemp("lineage")
    generate(
        root / "raw",
        SynthOptions(
            vocab=2, per_word=6, sessions=3, train_sessions=1, min_duration=0.5, max_duration=0.6
        ),
    )
    run_preprocess(load_config(None, _data_args(root)))
    return root / "processed"


def _data_args(root: Path) -> list[str]:
    raw = root / "raw"
    return [
        f"data.train_dir={raw / 'train'}",
        f"data.val_dir={raw / 'val'}",
        f"data.test_dir={raw / 'test'}",
        f"data.processed_dir={root / 'processed'}",
        "model.input_size=8",  # feature bins: what the tiny model takes
    ]


def _inputs(run: Run) -> list[tuple[str, str, str, dict[str, Any], str]]:
    """(name, digest, source uri, profile, context) of each dataset input of ``run``."""
    found = []
    for item in run.inputs.dataset_inputs:
        ds = item.dataset
        context = {t.key: t.value for t in item.tags}.get("mlflow.data.context", "")
        uri = json.loads(ds.source)["uri"]
        found.append((ds.name, ds.digest, uri, json.loads(ds.profile or "{}"), context))
    return found


def _wandb_artifacts(wandb_dir: Path, run_id: str) -> list[Any]:
    """The artifact records of offline W&B run ``run_id`` (after its exit record is written)."""
    offline_runs(wandb_dir, run_id)  # waits for the finished run file
    (log_file,) = (wandb_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = read_records(log_file)
    return [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]


@pytest.mark.slow  # trains, evaluates and registers a tiny model
@pytest.mark.usefixtures("one_thread")
def test_train_evaluate_register_record_the_data_set(
    data: Path, mlflow_server, s3_server, tmp_path: Path
) -> None:
    experiment = f"lineage-{uuid.uuid4().hex[:8]}"
    name = f"ssr-lineage-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    args = [
        *_data_args(data.parent),
        *tiny_overrides(
            data,
            work,
            training__num_epochs=1,
            training__viz_interval=100,
            tracking__mlflow__enabled=True,
            tracking__mlflow__tracking_uri=mlflow_server.uri,
            tracking__mlflow__experiment=experiment,
            tracking__wandb__enabled=True,
            registry__model_name=name,
            registry__log_pytorch_model=False,
        ),
    ]
    assert main(["train", *args]) == 0
    best = work / "checkpoints" / "best_model.pth"
    assert main(["evaluate", *args, "--checkpoint", str(best), "--out", str(tmp_path / "ev")]) == 0

    manifest = json.loads((data / "manifest.json").read_text())
    fingerprint = manifest["fingerprint"]
    assert len(fingerprint) == 64  # sha256: longer than an MLflow digest
    client = MlflowClient(mlflow_server.uri)
    runs = {
        r.data.tags["job"]: r
        for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    }
    expected = ("processed", fingerprint[:36], str(data.resolve()))
    (train_input,) = _inputs(runs["train"])
    assert train_input[:3] == expected and train_input[4] == TRAINING
    profile = train_input[3]
    assert profile["fingerprint"] == fingerprint  # the whole fingerprint, beside the digest
    assert profile["utterances"] == {k: v["utterances"] for k, v in manifest["splits"].items()}
    assert profile["labels"] == manifest["labels"] and len(manifest["labels"]) == 2
    (eval_input,) = _inputs(runs["evaluate"])
    assert eval_input[:3] == expected and eval_input[4] == EVALUATION

    # W&B: a dataset artifact referencing the data, used (not produced) by the training run
    wandb_id = load_checkpoint(str(best))["tracking"]["wandb"]
    (artifact,) = [a for a in _wandb_artifacts(tmp_path, wandb_id) if a.type == "dataset"]
    assert artifact.name == "processed" and artifact.use_after_commit
    meta = json.loads(artifact.metadata)
    assert meta["fingerprint"] == fingerprint and meta["context"] == TRAINING
    refs = {e.ref for e in artifact.manifest.contents if e.ref}
    assert (data / "manifest.json").resolve().as_uri() in refs

    # registering: the version's run carries the data set; its logged model names it
    cfg = load_config(None, args)
    with server_env(mlflow_server, s3_server):
        info = register_model(cfg, str(best), str(tmp_path / "ev"))
    version = client.get_model_version(name, info.version)
    assert version.tags["data.fingerprint"] == fingerprint
    assert version.tags["data.source"] == str(data.resolve())
    assert version.tags["train.data.fingerprint"] == fingerprint  # from the checkpoint
    assert version.tags["train.data.source"] == str(data.resolve())
    ((*registered, context),) = _inputs(client.get_run(version.run_id))
    assert tuple(registered[:3]) == expected and context == TRAINING
    # the version's source is its logged model (``models:/m-...``; the OSS registry keeps no
    # model_id column), whose page lists the data sets its metrics name
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert {(m.dataset_name, m.dataset_digest) for m in model.metrics} == {expected[:2]}
    assert {m.key for m in model.metrics} >= {"test/accuracy", "test/macro_f1"}


def test_model_data_names_training_and_test_data() -> None:
    manifest = {"fingerprint": FINGERPRINT, "labels": ["a", "b"], "splits": {}}
    (same,) = model_data("s3://bucket/run/processed/", FINGERPRINT, "/elsewhere/copy", manifest)
    assert (same.name, same.source, same.source_type) == (
        "processed",
        "s3://bucket/run/processed",
        "s3",
    )
    assert same.context == TRAINING and same.profile["labels"] == ["a", "b"]
    trained, tested = model_data("s3://b/old/processed", "0" * 64, "/data/new", manifest)
    assert (trained.digest, trained.context) == ("0" * 64, TRAINING)
    assert (tested.digest, tested.context, tested.name) == (FINGERPRINT, EVALUATION, "new")
    (only,) = model_data(None, None, "/data/processed", manifest)  # an old checkpoint
    assert only.context == EVALUATION
    assert describe_processed("/data/processed", {"labels": ["a", "b"]}) is None


def test_wandb_dataset_offline_references_s3_and_joins_the_group(tmp_path: Path) -> None:
    """An s3 data set becomes a reference (nothing read from S3); the run is in its group."""
    tracker = WandbTracker("lineage", "r", {}, directory=tmp_path, group="study-1")
    data = DataSet("processed", FINGERPRINT, "s3://bucket/processed", TRAINING, {"num_labels": 2})
    tracker.log_dataset(data.name, data.digest, data.source, data.context, data.profile)
    run_id = tracker.run.id
    tracker.finish()
    (artifact,) = _wandb_artifacts(tmp_path, run_id)
    entries = {e.path: e.ref for e in artifact.manifest.contents}
    assert entries["data"] == "s3://bucket/processed" and "dataset.json" in entries
    assert json.loads(artifact.metadata)["num_labels"] == 2
    (log_file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    (run,) = [r.run for r in read_records(log_file) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "study-1"


def test_unreachable_mlflow_buffers_the_data_set(mlflow_server, monkeypatch) -> None:
    """Queued like every call: sent once the server answers again (or dropped with the rest)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracker = MlflowTracker(
        mlflow_server.uri, f"lineage-{uuid.uuid4().hex[:8]}", "outage", retry_after=0.05
    )
    run_id = tracker.run_ids()["mlflow"]
    reachable = tracker.client
    tracker.client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # the server is gone
    tracker.log_dataset("processed", FINGERPRINT, "/data/processed", EVALUATION)
    assert tracker.buffered == 1
    tracker.client = reachable  # and back
    time.sleep(0.1)
    tracker.set_tags({"after": "outage"})
    assert tracker.buffered == 0
    tracker.finish()
    ((name, digest, uri, profile, context),) = _inputs(reachable.get_run(run_id))
    assert (name, digest, uri, context) == (
        "processed",
        FINGERPRINT[:36],
        "/data/processed",
        EVALUATION,
    )
    assert profile == {"fingerprint": FINGERPRINT}
