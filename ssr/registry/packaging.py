"""How a registered model is packaged: the raw-EMG pyfunc logged as code with the ``ssr``
package and public pinned requirements, its signature and example, a sentence model's lexicon,
language model and decoding settings, and the PyTorch flavour."""

from __future__ import annotations

import importlib.metadata
import json
import os
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
from ssr.errors import CheckpointError, DataError, RegistryError
from ssr.registry.pyfunc_model import DECODING, LANGUAGE_MODEL, LEXICON, EmgClassifier
from ssr.registry.safe_load import MODEL_CODE, MODEL_CODE_FILE
from ssr.registry.transcriber import decoding_info
from ssr.sentences.lm import WORDS_NAME, LanguageModel
from ssr.training.checkpoint import stored_config

EXAMPLE_ROWS = 2
EXAMPLE_FRAMES = {"words": 8, "sentences": 100}  # frames of the longest example recording
SERVING_REQUIREMENTS = Path(__file__).with_name("serving-requirements.txt")


def example_input(split: ProcessedSplit) -> pd.DataFrame:
    """A small raw-EMG example: synthetic noise shaped like the test recordings (of a sentence
    data set: up to 1 s at a 10 ms hop, the rows of different lengths)."""
    channels = int(split.manifest["num_channels"])
    pre = split.manifest["preprocessing"]
    longest = EXAMPLE_FRAMES.get(split.task, EXAMPLE_FRAMES["words"])
    frames = [int(n) for n in split.lengths[:EXAMPLE_ROWS]]
    if split.task == "sentences":  # rows of different lengths, as recordings are
        frames = [max(1, min(n, longest) // (row + 1)) for row, n in enumerate(frames)]
    rng = np.random.default_rng(0)
    rows = []
    for n in frames:
        samples = int(pre["window_size"]) + (min(n, longest) - 1) * int(pre["hop_length"])
        rows.append(rng.standard_normal((samples, channels)).astype(np.float32).tolist())
    return pd.DataFrame({"emg": rows})


def pytorch_signature(
    channels: int, bins: int, classes: int, per_frame: bool = False
) -> ModelSignature:
    """Inputs ``x`` (B, T, C, F) and ``padding_mask`` (B, T); output ``logits`` (B, classes),
    or (B, T', units) for a CTC model (``per_frame``)."""
    out_shape = (-1, -1, classes) if per_frame else (-1, classes)
    return ModelSignature(
        inputs=Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, -1, channels, bins), "x"),
                TensorSpec(np.dtype(bool), (-1, -1), "padding_mask"),
            ]
        ),
        outputs=Schema([TensorSpec(np.dtype(np.float32), out_shape, "logits")]),
    )


def sentence_artifacts(
    state: dict[str, Any], directory: str | os.PathLike[str], source: str = "checkpoint"
) -> dict[str, str]:
    """The artifacts a ``task: sentences`` checkpoint adds to the pyfunc (``{}`` for a word
    checkpoint): its ``language_model`` written as ``lm.arpa`` and ``words.txt`` and its
    decoding settings as ``decoding.json``, in ``directory``; keys as the pyfunc reads them.
    A sentence checkpoint without a usable language model is a :class:`CheckpointError`."""
    cfg = stored_config(state, source)
    if cfg.task != "sentences":
        return {}
    if "language_model" not in state:
        raise CheckpointError(f"{source}: a task sentences checkpoint without 'language_model'")
    try:
        lm = LanguageModel.from_state(state["language_model"], source)
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    folder = Path(directory) / "sentences"
    arpa = lm.write(folder)
    info = folder / "decoding.json"
    info.write_text(json.dumps(decoding_info(cfg.decoding, lm), sort_keys=True))
    return {
        LANGUAGE_MODEL: str(arpa),
        LEXICON: str(arpa.with_name(WORDS_NAME)),
        DECODING: str(info),
    }


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
    """The network in the PyTorch flavour (a ``torch.export`` program, loads without pickle);
    a sentence model's output is per frame (B, T', units)."""
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
        signature=pytorch_signature(c, f, classes, per_frame=train_cfg.task == "sentences"),
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
