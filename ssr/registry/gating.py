"""What the promotion gate compares: the candidate and the champion scored on the same test
split, the baseline on it and the candidate's registered evaluation.

``task: words`` (a version without a ``task`` tag is one): per-utterance correctness of both
registered models, the linear baseline (:mod:`ssr.baseline`) refitted on the data set, and
:func:`~ssr.registry.gate.decide`. ``task: sentences``: both models transcribe the test split
(LM decoding), word errors against its transcripts (:func:`ssr.sentences.scoring.score_texts`);
the baseline's word errors per utterance come from the ``predictions.json`` registered with the
candidate, matched by utterance id; then :func:`~ssr.registry.gate.decide_sentences`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from ssr.baseline import score_baseline
from ssr.config import Config
from ssr.data.processed import ProcessedSplit
from ssr.errors import DataError, RegistryError
from ssr.fsutil import read_json_object
from ssr.registry.gate import GateDecision, SentenceGateDecision, decide, decide_sentences
from ssr.sentences.scoring import score_texts

log = logging.getLogger(__name__)

EVALUATION_METRICS = "evaluation/metrics.json"  # logged by ssr register beside the model
EVALUATION_PREDICTIONS = "evaluation/predictions.json"
T = TypeVar("T")


def version_task(version: ModelVersion) -> str:
    """The version's ``task`` tag, else its stored config's (``config`` tag), else words."""
    tags = version.tags or {}
    if tags.get("task"):
        return str(tags["task"])
    try:
        task = json.loads(tags.get("config") or "{}").get("task")
    except (ValueError, AttributeError):  # truncated or not an object
        task = None
    return str(task or "words")


def _registered_file(
    client: MlflowClient, version: ModelVersion, path: str, read: Callable[[Path], T]
) -> T | None:
    """``read`` of the file ``path`` of the run that registered ``version``, or None when the
    run has no such file; a DataError from ``read`` names the file as ``runs:/<run>/<path>``."""
    run_id = version.run_id
    folder, _, _ = path.rpartition("/")
    if not run_id or path not in {a.path for a in client.list_artifacts(run_id, folder)}:
        log.info("%s version %s: no %s", version.name, version.version, path)
        return None
    with tempfile.TemporaryDirectory(prefix="ssr-gate-") as tmp:
        local = client.download_artifacts(run_id, path, tmp)
        try:
            return read(Path(local))
        except DataError as exc:
            raise DataError(str(exc).replace(str(local), f"runs:/{run_id}/{path}")) from None


def evaluation_per_session(
    client: MlflowClient, version: ModelVersion
) -> dict[str, dict[str, Any]] | None:
    """The ``per_session`` scores of ``version``'s test evaluation (``evaluation/metrics.json``
    of the run that registered it), or None when the run has no such file or an older one
    without them. A malformed file is a DataError naming it."""
    from ssr.evaluation import read_metrics  # not at the top: it loads matplotlib

    metrics = _registered_file(client, version, EVALUATION_METRICS, read_metrics)
    per_session: dict[str, dict[str, Any]] | None = (metrics or {}).get("per_session")
    return per_session


def baseline_word_errors(
    client: MlflowClient, version: ModelVersion, ids: list[str], ref_words: np.ndarray
) -> np.ndarray:
    """The baseline's word errors per utterance of ``ids`` from ``version``'s registered
    ``predictions.json`` (rows matched by ``id``); RegistryError when it has none, DataError
    when a row is missing, malformed or was scored against another transcript length."""
    rows = _registered_file(client, version, EVALUATION_PREDICTIONS, read_json_object)
    where = f"runs:/{version.run_id}/{EVALUATION_PREDICTIONS}"
    if rows is None:
        raise RegistryError(
            f"{version.name} version {version.version}: no {EVALUATION_PREDICTIONS} registered "
            "with it to take the baseline's word errors from; register an evaluation made by "
            "`ssr evaluate`, or set registry.baseline_margin=null to skip the baseline"
        )
    by_id = {r.get("id"): r for r in rows.get("predictions") or [] if isinstance(r, dict)}
    errors = []
    for source, words in zip(ids, ref_words, strict=True):
        row = by_id.get(source)
        if row is None:
            raise DataError(f"{where}: no prediction for test utterance {source}")
        value = row.get("baseline_word_errors")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"{where}: {source}: 'baseline_word_errors' {value!r} is not a count")
        if row.get("ref_words", words) != words:
            raise DataError(
                f"{where}: {source}: scored on {row['ref_words']} reference words, the test "
                f"split has {words}; point data.processed_dir at the data it was tested on"
            )
        errors.append(value)
    return np.array(errors, dtype=np.int64)


def _words_gate(
    cfg: Config, client: MlflowClient, cand: ModelVersion, champ: ModelVersion | None
) -> GateDecision:
    from ssr.registry.pyfunc_model import correctness_on_test_split

    data = cfg.data
    cand_correct = correctness_on_test_split(
        f"models:/{cand.name}/{cand.version}",
        data.processed_dir,
        data.test_dir,
        expected_fingerprint=cand.tags.get("data.fingerprint"),
    )
    champ_correct = None
    if champ is not None:
        champ_correct = correctness_on_test_split(
            f"models:/{champ.name}/{champ.version}", data.processed_dir, data.test_dir
        )
    reg = cfg.registry
    baseline = per_session = None
    if reg.baseline_margin is not None:
        baseline = score_baseline(str(data.processed_dir), "test").accuracy
        per_session = evaluation_per_session(client, cand)
    return decide(
        np.asarray(cand_correct, bool),
        None if champ_correct is None else np.asarray(champ_correct, bool),
        min_accuracy=reg.min_accuracy,
        margin=reg.margin,
        p_value=reg.p_value,
        baseline_accuracy=baseline,
        baseline_margin=reg.baseline_margin or 0.0,
        per_session=per_session,
    )


def _sentences_gate(
    cfg: Config, client: MlflowClient, cand: ModelVersion, champ: ModelVersion | None
) -> SentenceGateDecision:
    from ssr.registry.pyfunc_model import transcripts_on_test_split

    data, reg = cfg.data, cfg.registry
    split = ProcessedSplit(data.processed_dir, "test")
    if split.task != "sentences":
        raise RegistryError(
            f"{data.processed_dir}: a {split.task} data set, but {cand.name} version "
            f"{cand.version} transcribes sentences; point data.processed_dir at its test data"
        )
    cand_hyps = transcripts_on_test_split(
        f"models:/{cand.name}/{cand.version}",
        data.processed_dir,
        data.test_dir,
        expected_fingerprint=cand.tags.get("data.fingerprint"),
    )
    scores = score_texts(split.texts, cand_hyps)
    champ_errors = None
    if champ is not None:
        champ_hyps = transcripts_on_test_split(
            f"models:/{champ.name}/{champ.version}", data.processed_dir, data.test_dir
        )
        champ_errors = score_texts(split.texts, champ_hyps).word_errors
    baseline = per_session = None
    if reg.baseline_margin is not None:
        baseline = baseline_word_errors(client, cand, split.ids, scores.ref_words)
        per_session = evaluation_per_session(client, cand)
    return decide_sentences(
        scores.word_errors,
        scores.ref_words,
        champ_errors,
        max_wer=reg.max_wer,
        margin=reg.margin,
        p_value=reg.p_value,
        baseline_errors=baseline,
        baseline_margin=reg.baseline_margin or 0.0,
        per_session=per_session,
    )


def gate_versions(
    cfg: Config, client: MlflowClient, cand: ModelVersion, champ: ModelVersion | None
) -> GateDecision | SentenceGateDecision:
    """Score candidate and champion on the same test split and apply the gate of the
    candidate's task; a champion of another task cannot be compared (RegistryError)."""
    task = version_task(cand)
    if champ is not None and version_task(champ) != task:
        raise RegistryError(
            f"{cand.name}: version {cand.version} is a {task} model but the champion "
            f"(version {champ.version}) is a {version_task(champ)} model; they cannot be "
            "compared: register it under another registry.model_name"
        )
    if task == "sentences":
        return _sentences_gate(cfg, client, cand, champ)
    if task != "words":
        raise RegistryError(f"{cand.name} version {cand.version}: unknown task {task!r}")
    return _words_gate(cfg, client, cand, champ)
