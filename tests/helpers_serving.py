"""A tiny registered champion for the serving tests: synthetic raw EMG, preprocessed, a briefly
trained checkpoint, evaluated and registered on a real MLflow server; and a pickled impostor."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import torch
from mlflow.tracking import MlflowClient

from ssr.config import Config, load_config
from ssr.data.preprocess import run_preprocess
from ssr.data.processed import ProcessedSplit, collate
from ssr.data.synth import SynthOptions, generate
from ssr.evaluation import evaluate
from ssr.model import build_model
from ssr.registry.register import register_model
from ssr.training.checkpoint import save_checkpoint

TINY = [
    "model.input_size=8",
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.max_frames=64",
    "model.dropout=0.0",
    "tracking.mlflow.experiment=serving-tests",
    "registry.log_pytorch_model=false",
]


@dataclass
class Champion:
    """A registered model version with alias ``champion`` and the data it was made from."""

    name: str
    version: str
    root: Path  # raw/{train,val,test}, processed/
    labels: list[str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@champion"

    def test_files(self) -> list[Path]:
        return sorted((self.root / "raw" / "test").rglob("*.npz"))


@contextmanager
def server_env(mlflow_server, s3_server):
    """MLFLOW_TRACKING_URI and the S3 variables for the duration (no pytest fixture needed)."""
    values = {
        **s3_server.env,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
    }
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield values
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _config(root: Path, name: str) -> Config:
    raw = root / "raw"
    return load_config(
        None,
        [
            f"data.train_dir={raw / 'train'}",
            f"data.val_dir={raw / 'val'}",
            f"data.test_dir={raw / 'test'}",
            f"data.processed_dir={root / 'processed'}",
            f"registry.model_name={name}",
            *TINY,
        ],
    )


def make_champion(root: Path, mlflow_server, s3_server, steps: int = 20) -> Champion:
    """Synthesise, preprocess, train ``steps`` full-batch steps, evaluate, register, promote."""
    generate(
        root / "raw",
        SynthOptions(
            vocab=3, per_word=9, sessions=3, train_sessions=1, min_duration=0.5, max_duration=0.8
        ),
    )
    name = f"ssr-serve-{uuid.uuid4().hex[:8]}"
    cfg = _config(root, name)
    run_preprocess(cfg)
    train = ProcessedSplit(cfg.data.processed_dir, "train")
    torch.manual_seed(0)
    model = build_model(cfg.model, len(train.label_names))
    batch = collate([train[i] for i in range(len(train))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(batch.x, batch.padding_mask()), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {"model": model.state_dict(), "config": cfg.model_dump(), "labels": train.label_names}
    ckpt = save_checkpoint(state, str(root / "ckpt"), "model.pth")
    eval_dir = root / "eval"
    evaluate(ckpt, "test", cfg.data.processed_dir, str(eval_dir), device="cpu")
    with server_env(mlflow_server, s3_server):
        info = register_model(cfg, ckpt, str(eval_dir))
        MlflowClient().set_registered_model_alias(name, "champion", info.version)
    return Champion(name, info.version, root, list(train.label_names))


class Impostor(mlflow.pyfunc.PythonModel):
    """A python_model whose unpickling creates the file ``marker`` (what a hostile pickle could
    do instead): ``open(marker, "w")`` runs as soon as the pickle is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))

    def predict(self, context, model_input):  # never reached
        return model_input


def save_impostor(path: Path, marker: Path) -> Path:
    """A model folder whose python_model is a pickle that creates ``marker`` when loaded."""
    mlflow.pyfunc.save_model(str(path), python_model=Impostor(marker), pip_requirements=[])
    assert not marker.exists()
    return path
