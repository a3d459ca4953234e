"""The shipped model: an MLflow ``pyfunc`` that takes raw EMG and returns word probabilities
(``task: words``) or transcripts (``task: sentences``).

Preprocessing travels with the weights: the model carries the processed data set's manifest
and rebuilds the same :class:`~ssr.data.features.FeatureExtractor` (filters, normalisation,
spectral bands) that produced the training features.

Input: a pandas DataFrame, one row per recording, column ``emg`` holding the samples as a
nested list / 2-D array (time, channels) at the model's sampling rate, and an optional column
``sampling_rate`` (Hz) that must equal it. Output of a word model: a DataFrame with ``label``
(the most probable word), ``confidence`` (its probability) and one ``p_<label>`` column per
class. Output of a sentence model (one that carries the :mod:`ssr.registry.transcriber`
artifacts): ``text`` (beam search with the model's lexicon and language model),
``confidence`` (in [0, 1]) and ``greedy_text`` (best path, no language model).

Input a model cannot use (wrong channel count, NaN, too short or too long, another sampling
rate, not a numeric array) raises :class:`InvalidInputError`: a :class:`~ssr.errors.DataError` that
is also an MLflow ``INVALID_PARAMETER_VALUE`` error, so MLflow's scoring server answers it with
HTTP 400 and the message, which names the row.

Only load models through :func:`load_pyfunc` (or :mod:`ssr.registry.safe_load`): it checks that
the model is one ``ssr register`` logged as code before any of the model's code runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PyFuncModel, PythonModel, PythonModelContext

from ssr.errors import DataError, RegistryError
from ssr.registry.safe_load import load_checked

if TYPE_CHECKING:
    from ssr.registry.transcriber import Transcriber

WEIGHTS = "weights"  # artifact keys
MODEL_INFO = "model_info"
MANIFEST = "manifest"
LANGUAGE_MODEL = "language_model"  # sentence models only (ssr.registry.transcriber)
LEXICON = "lexicon"
DECODING = "decoding"
SENTENCE_ARTIFACTS = (LANGUAGE_MODEL, LEXICON, DECODING)
BATCH_SIZE = 16
FEATURE_KEYS = ("preprocessing", "input_size", "num_channels", "normalization")


class InvalidInputError(MlflowException, DataError):
    """Model input the classifier cannot use; HTTP 400 from MLflow's scoring server."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def probability_columns(labels: list[str]) -> list[str]:
    """Output column names, ``p_<label>`` in class-id order."""
    return [f"p_{label}" for label in labels]


def feature_params(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields that decide the features (equal params => interchangeable features)."""
    return {key: manifest.get(key) for key in FEATURE_KEYS}


class EmgClassifier(PythonModel):
    """Raw EMG recordings -> label, confidence and per-class probabilities; or, for a sentence
    model, -> transcript, confidence and best-path transcript."""

    transcriber: Transcriber | None = None

    def load_context(self, context: PythonModelContext) -> None:
        from safetensors.torch import load_file

        from ssr.config import ModelConfig, stored_model_section
        from ssr.data.features import FeatureExtractor
        from ssr.model import build_model

        info = json.loads(Path(context.artifacts[MODEL_INFO]).read_text())
        self.manifest: dict[str, Any] = json.loads(Path(context.artifacts[MANIFEST]).read_text())
        self.labels: list[str] = list(info["labels"])
        self.model_cfg = ModelConfig(**stored_model_section(info["model"]))
        model = build_model(self.model_cfg, len(self.labels))
        model.load_state_dict(load_file(context.artifacts[WEIGHTS], device="cpu"))
        self.model = model.eval()
        self.extractor = FeatureExtractor.from_manifest(self.manifest)
        self.transcriber = None
        if DECODING in context.artifacts:
            # not at the top: a word model needs neither KenLM nor flashlight-text
            from ssr.registry.transcriber import Transcriber

            missing = [k for k in SENTENCE_ARTIFACTS if k not in context.artifacts]
            if missing:
                raise RegistryError(f"sentence model without artifact(s) {missing}")
            if not callable(getattr(self.model, "output_lengths", None)):
                raise RegistryError(f"sentence model of model.arch={self.model_cfg.arch}: not CTC")
            files = [context.artifacts[k] for k in SENTENCE_ARTIFACTS]
            self.transcriber = Transcriber.from_files(self.labels, *files)

    @property
    def task(self) -> str:
        """``sentences`` when the model transcribes, else ``words``."""
        return "words" if self.transcriber is None else "sentences"

    @property
    def max_samples(self) -> int:
        """Longest recording (samples) whose frames fit ``model.max_frames``."""
        ex = self.extractor
        return ex.window_size + (int(self.model_cfg.max_frames) - 1) * ex.hop_length

    def check_recording(self, emg: np.ndarray, source: str) -> None:
        """Raise :class:`InvalidInputError` naming ``source`` if this model cannot classify ``emg``:
        not (time, channels), another channel count, NaN/inf, shorter than one window, or
        more frames than ``model.max_frames``."""
        try:
            self.extractor.check(emg, source)
        except DataError as exc:
            raise InvalidInputError(str(exc)) from None
        if emg.shape[0] > self.max_samples:
            frames = self.extractor.num_frames(emg.shape[0])
            rate = self.extractor.sampling_rate
            raise InvalidInputError(
                f"{source}: {emg.shape[0]} samples ({emg.shape[0] / rate:g} s) make {frames} "
                f"frames, more than the model's max_frames={self.model_cfg.max_frames}; at most "
                f"{self.max_samples} samples ({self.max_samples / rate:g} s at {rate:g} Hz): "
                "split the recording"
            )

    def _recordings(self, model_input: Any) -> list[np.ndarray]:
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if not isinstance(model_input, pd.DataFrame) or "emg" not in model_input.columns:
            raise InvalidInputError(
                "model input must be a DataFrame with an 'emg' column (time, channels)"
            )
        if "sampling_rate" in model_input.columns:
            for i, rate in enumerate(model_input["sampling_rate"]):
                try:
                    given = None if rate is None or pd.isna(rate) else float(rate)
                except (TypeError, ValueError):
                    raise InvalidInputError(
                        f"row {i}: sampling_rate {rate!r} is not a number"
                    ) from None
                if given is not None and given != self.extractor.sampling_rate:
                    raise InvalidInputError(
                        f"row {i}: sampling_rate {given:g} Hz, the model expects "
                        f"{self.extractor.sampling_rate:g} Hz"
                    )
        recordings = []
        for i, cell in enumerate(model_input["emg"]):
            try:
                emg = np.asarray(cell if cell is not None else [], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(
                    f"row {i}: emg is not a numeric (time, channels) array "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            self.check_recording(emg, f"row {i}")
            recordings.append(emg)
        return recordings

    def featurise(
        self, recordings: list[np.ndarray], sources: list[str] | None = None
    ) -> list[np.ndarray]:
        """Raw EMG (time, channels) recordings -> features (frames, channels, bands)."""
        names = sources or [f"row {i}" for i in range(len(recordings))]
        return [self.extractor(emg, name) for emg, name in zip(recordings, names, strict=True)]

    def _batches(
        self, features: list[np.ndarray]
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Padded batches of similar lengths: (indices, x, padding mask, lengths)."""
        order = sorted(range(len(features)), key=lambda i: features[i].shape[0])
        for start in range(0, len(order), BATCH_SIZE):
            idx = order[start : start + BATCH_SIZE]
            lengths = torch.tensor([features[i].shape[0] for i in idx])
            c, f = features[idx[0]].shape[1:]
            x = torch.zeros(len(idx), int(lengths.max()), c, f)
            for row, i in enumerate(idx):
                x[row, : lengths[row]] = torch.from_numpy(np.asarray(features[i], np.float32))
            mask = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
            yield idx, x, mask, lengths

    @torch.inference_mode()
    def predict_features(self, features: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, classes) for feature arrays (frames, channels, bands)."""
        out = np.zeros((len(features), len(self.labels)), dtype=np.float64)
        for idx, x, mask, _ in self._batches(features):
            probs = torch.softmax(self.model(x, mask).float(), dim=-1)
            out[idx] = probs.numpy()
        return out

    @torch.inference_mode()
    def emissions(self, features: list[np.ndarray]) -> list[np.ndarray]:
        """A sentence model's per-frame unit log-probabilities, (output frames, units) float32
        per feature array (frames, channels, bands)."""
        out: list[np.ndarray] = [np.zeros((0, len(self.labels)), np.float32)] * len(features)
        for idx, x, mask, lengths in self._batches(features):
            log_probs = torch.log_softmax(self.model(x, mask).float(), dim=-1).numpy()
            frames = getattr(self.model, "output_lengths")(lengths).tolist()  # noqa: B009
            for row, i in enumerate(idx):
                out[i] = np.ascontiguousarray(log_probs[row, : frames[row]])
        return out

    def predict_frame(self, features: list[np.ndarray]) -> pd.DataFrame:
        """The output DataFrame for feature arrays: word probabilities, or transcripts."""
        if self.transcriber is None:
            return self.to_frame(self.predict_features(features))
        return self.transcriber.frame(self.emissions(features))

    def to_frame(self, probs: np.ndarray) -> pd.DataFrame:
        """The output DataFrame for a probability matrix."""
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
        frame = pd.DataFrame(
            {
                "label": [self.labels[i] for i in best],
                "confidence": probs[np.arange(len(probs)), best] if len(probs) else [],
            }
        )
        for col, values in zip(probability_columns(self.labels), probs.T, strict=True):
            frame[col] = values
        return frame

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Classify or transcribe each row's raw EMG recording (all rows are checked before
        any runs)."""
        recordings = self._recordings(model_input)
        try:
            features = self.featurise(recordings)
        except DataError as exc:
            raise InvalidInputError(str(exc)) from None
        return self.predict_frame(features)


def load_pyfunc(model_uri: str) -> tuple[PyFuncModel, EmgClassifier]:
    """Load a registered ssr model: the pyfunc wrapper and the :class:`EmgClassifier` inside.

    The model is checked first (:func:`ssr.registry.safe_load.fetch_checked`): anything but a
    pyfunc ``ssr register`` logged as code is refused before its code or pickle runs.
    """

    loaded = load_checked(model_uri)
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, EmgClassifier):
        raise RegistryError(f"{model_uri}: not an ssr EMG model ({type(inner).__name__})")
    return loaded, inner


def load_classifier(model_uri: str) -> EmgClassifier:
    """The :class:`EmgClassifier` of a registered ssr model."""
    return load_pyfunc(model_uri)[1]


def _raw_path(source: str, test_dir: str | os.PathLike[str]) -> Path:
    path = Path(source)
    if path.is_file():
        return path
    candidate = Path(test_dir) / source
    if candidate.is_file():
        return candidate
    raise DataError(
        f"{source}: raw recording not found (also tried under {test_dir}); the gate needs the "
        "raw test split when the models' preprocessing differs"
    )


def _test_split(
    model_uri: str,
    processed_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str],
    expected_fingerprint: str | None,
) -> tuple[EmgClassifier, Any, list[np.ndarray]]:
    """The model, the processed test split and its features as the model sees them: the stored
    ones when the model's preprocessing equals the data set's, else the raw recordings (from
    ``test_dir``) featurised by the model. A data set whose fingerprint differs from
    ``expected_fingerprint`` (when given) is refused."""
    # not at the top: they load tqdm, which the model's serving environment does not hold
    from ssr.data.formats import read_native
    from ssr.data.processed import ProcessedSplit

    split = ProcessedSplit(processed_dir, "test")
    found = split.manifest.get("fingerprint")
    if expected_fingerprint and found and found != expected_fingerprint:
        raise RegistryError(
            f"{processed_dir}: data fingerprint {found[:12]} differs from the challenger's "
            f"{expected_fingerprint[:12]}; point data.processed_dir at the data it was tested on"
        )
    model = load_classifier(model_uri)
    if feature_params(model.manifest) == feature_params(split.manifest):
        return model, split, [split[i][0].numpy() for i in range(len(split))]
    features = []
    for source in split.ids:
        path = _raw_path(source, test_dir)
        emg = read_native(path).emg if path.suffix == ".npz" else np.load(path)
        features.append(model.extractor(emg, str(path)))
    return model, split, features


def correctness_on_test_split(
    model_uri: str,
    processed_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str] = "data/test",
    expected_fingerprint: str | None = None,
) -> np.ndarray:
    """Per-utterance correctness (bool) of a registered model on a processed test split.

    When the model's preprocessing equals the data set's, the stored features are used;
    otherwise the model featurises the raw recordings itself (from ``test_dir``). With
    ``expected_fingerprint``, a data set with another fingerprint is refused.
    """
    model, split, features = _test_split(model_uri, processed_dir, test_dir, expected_fingerprint)
    probs = model.predict_features(features)
    names = split.label_names
    truth = [names[int(i)] for i in split.labels]
    predicted = [model.labels[int(i)] for i in probs.argmax(axis=1)]
    return np.array([p == t for p, t in zip(predicted, truth, strict=True)], dtype=bool)


def transcripts_on_test_split(
    model_uri: str,
    processed_dir: str | os.PathLike[str],
    test_dir: str | os.PathLike[str] = "data/test",
    expected_fingerprint: str | None = None,
) -> list[str]:
    """A registered sentence model's transcript (beam search with its lexicon and language
    model: the ``text`` it answers with) of each utterance of a processed test split, in split
    order; features as in :func:`correctness_on_test_split`."""
    model, _, features = _test_split(model_uri, processed_dir, test_dir, expected_fingerprint)
    if model.transcriber is None:
        raise RegistryError(f"{model_uri}: a word model; it has no transcripts")
    return [str(text) for text in model.predict_frame(features)["text"]]
