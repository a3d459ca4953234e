"""How a registered model is packaged: the raw-EMG pyfunc logged as code with the ``ssr``
package and public pinned requirements, its signature and example, and the PyTorch flavour."""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature, infer_signature
from mlflow.pyfunc import PythonModelContext
from mlflow.types.schema import AnyType, Array, ColSpec, Schema, TensorSpec

import ssr
from ssr.config import Config
from ssr.data.processed import ProcessedSplit
from ssr.errors import RegistryError
from ssr.registry.pyfunc_model import EmgClassifier
from ssr.registry.safe_load import MODEL_CODE, MODEL_CODE_FILE

EXAMPLE_ROWS = 2
SERVING_REQUIREMENTS = Path(__file__).with_name("serving-requirements.txt")


def example_input(split: ProcessedSplit) -> pd.DataFrame:
    """A small raw-EMG example: synthetic noise shaped like the test recordings."""
    channels = int(split.manifest["num_channels"])
    pre = split.manifest["preprocessing"]
    frames = [int(n) for n in split.lengths[:EXAMPLE_ROWS]]
    rng = np.random.default_rng(0)
    rows = []
    for n in frames:
        samples = int(pre["window_size"]) + (min(n, 8) - 1) * int(pre["hop_length"])
        rows.append(rng.standard_normal((samples, channels)).astype(np.float32).tolist())
    return pd.DataFrame({"emg": rows})


def pytorch_signature(channels: int, bins: int, classes: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, -1, channels, bins), "x"),
                TensorSpec(np.dtype(bool), (-1, -1), "padding_mask"),
            ]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes), "logits")]),
    )


def serving_distributions() -> list[str]:
    """The distribution names in ``serving-requirements.txt`` (public packages only)."""
    lines = SERVING_REQUIREMENTS.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def pip_requirements() -> list[str]:
    """The logged model's requirements: each serving distribution pinned to the version
    installed here (torch without its local build tag such as ``+cpu``). This project is not
    among them: its code travels with the model."""
    pins = []
    for name in serving_distributions():
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise RegistryError(f"{name}: not installed; the logged model needs it") from None
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def _package_copy(dst: Path) -> Path:
    """A copy of the ``ssr`` package without bytecode caches, to ship with the model."""
    src = Path(ssr.__file__).resolve().parent
    target = dst / "ssr"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    return target


def log_classifier(
    artifacts: dict[str, str],
    *,
    signature: ModelSignature | None = None,
    input_example: pd.DataFrame | None = None,
    name: str = "model",
) -> Any:
    """Log the raw-EMG pyfunc in the active run: as code (:data:`MODEL_CODE`), with the ``ssr``
    package as ``code_paths`` and public pinned requirements; the ``ModelInfo``. Without a
    ``signature``, one is inferred by running the model on ``input_example`` (if given)."""
    if signature is None and input_example is not None:
        signature = pyfunc_signature(EmgClassifier(), artifacts, input_example)
    with tempfile.TemporaryDirectory(prefix="ssr-pyfunc-") as tmp:
        tmpdir = Path(tmp)
        model_code = tmpdir / MODEL_CODE_FILE
        model_code.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts=artifacts,
            code_paths=[str(_package_copy(tmpdir))],
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements(),
        )


def pyfunc_signature(
    classifier: EmgClassifier, artifacts: dict[str, str], example: pd.DataFrame
) -> ModelSignature:
    """Inputs ``emg`` (an array: one entry per time step) and optional ``sampling_rate``; the
    output schema inferred by running the model once on the example.

    ``emg`` is ``Array(Any)``, not the inferred ``Array(Array(double))``: MLflow 3 enforces an
    array of arrays element by element (a pandas Series per time step: the small model's
    prediction of a 2 s recording took 161 ms with it, 22 ms without) and refuses integer
    samples. The classifier checks every row itself (numeric, 2-D, channels, finite, length)
    and answers with the row's problem; MLflow still refuses an ``emg`` that is not an array.
    """

    classifier.load_context(PythonModelContext(artifacts=artifacts, model_config={}))
    output = classifier.predict(None, example)
    signature = infer_signature(example, output)
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(Array(AnyType()), "emg"),
        ColSpec("double", "sampling_rate", required=False),
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=signature.outputs)


def log_pytorch(
    model: torch.nn.Module, split: ProcessedSplit, train_cfg: Config, classes: int
) -> None:
    """The network in the PyTorch flavour (a ``torch.export`` program, loads without pickle)."""
    lengths = [int(n) for n in split.lengths[:2]]
    while len(lengths) < 2:
        lengths.append(lengths[0])
    t = max(max(lengths), 2)
    c, f = train_cfg.model.num_channels, train_cfg.model.input_size
    x = np.zeros((2, t, c, f), dtype=np.float32)
    for row in range(2):
        x[row, : lengths[row]] = split[row % len(split)][0].numpy()
    mask = np.arange(t)[None, :] >= np.array(lengths)[:, None]
    mlflow.pytorch.log_model(
        model,
        name="pytorch-model",
        input_example=(x, mask),
        signature=pytorch_signature(c, f, classes),
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
