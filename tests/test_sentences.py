"""task: sentences end to end on the tiny tone-burst data set (tests/helpers_sentences.py): a
tiny CTC model trained for seconds transcribes a held-out session far better than chance,
deterministically, resumes exactly, and ``ssr evaluate`` reports WER/CER for it and for the
baseline, with the lexicon and language model it carries."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_sentences import OVERRIDES, SENTENCE_EPOCHS, TRAIN_OVERRIDES, data_overrides
from mlflow.tracking import MlflowClient
from wandb_offline import offline_runs

from ssr.cli import main
from ssr.config import load_config
from ssr.data.formats import write_native
from ssr.data.preprocess import run_preprocess
from ssr.errors import ConfigError, DataError
from ssr.sentences.lm import LanguageModel
from ssr.training.checkpoint import load_checkpoint


def _evaluate(run: dict[str, Path], out: Path) -> dict:
    code = main(
        [
            "evaluate",
            *data_overrides(run["root"]),
            "tracking.mlflow.enabled=false",
            "tracking.wandb.enabled=false",
            "--checkpoint",
            str(run["checkpoints"] / "best_model.pth"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_tiny_ctc_model_transcribes_a_held_out_session(
    sentence_run: dict[str, Path], tmp_path: Path, one_thread: None
) -> None:
    metrics = _evaluate(sentence_run, tmp_path / "a")
    assert metrics["task"] == "sentences" and metrics["num_samples"] == 10
    # chance: a CTC model that learned nothing emits blanks (CER 1.0)
    assert metrics["greedy"]["cer"] < 0.35, metrics["greedy"]
    assert metrics["cer"] < 0.35 and 0 <= metrics["wer"] <= 1
    assert metrics["baseline"]["wer"] >= 0 and "greedy_cer" in metrics["baseline"]
    assert set(metrics["per_session"]) == {"s3"}  # the held-out test session
    assert {"wer", "cer", "baseline_wer"} <= set(metrics["per_session"]["s3"])
    assert metrics["decoding"]["lexicon_size"] == 12  # the training transcripts' words
    predictions = json.loads((tmp_path / "a" / "predictions.json").read_text())["predictions"]
    assert len(predictions) == 10
    row = predictions[0]
    assert {"reference", "hypothesis", "greedy", "baseline", "word_errors"} <= set(row)
    words = set(
        load_checkpoint(str(sentence_run["checkpoints"] / "best_model.pth"))["language_model"][
            "words"
        ]
    )
    for p in predictions:  # the beam search only emits lexicon words
        assert set(p["hypothesis"].split()) <= words
    report = (tmp_path / "a" / "report.html").read_text()
    assert "Worst sentences" in report and "data:image/png;base64," in report
    again = _evaluate(sentence_run, tmp_path / "b")
    assert again == metrics  # decoding is deterministic


def test_training_artefacts_of_a_sentence_run(sentence_run: dict[str, Path]) -> None:
    state = load_checkpoint(str(sentence_run["checkpoints"] / "last.pth"))
    lm = LanguageModel.from_state(state["language_model"], "last.pth")
    assert lm.order == 2 and "jump" in lm.words
    history = state["history"]
    assert len(history) == SENTENCE_EPOCHS
    assert {"val_cer", "val_wer", "val_worst_session_cer"} <= set(history[-1])
    assert history[-1]["val_cer"] < history[0]["val_cer"]
    outputs = sentence_run["outputs"]
    assert (outputs / f"posteriorgram_epoch_{SENTENCE_EPOCHS}.png").is_file()
    summary = json.loads((outputs / "training_summary.json").read_text())
    assert summary["val_sessions"] == ["s2"]


def test_sentence_training_resumes_exactly(
    sentence_run: dict[str, Path], tmp_path: Path, one_thread: None
) -> None:
    """8 epochs, then --resume auto to the full budget: the same weights as one straight run."""
    common = [
        *data_overrides(sentence_run["root"]),
        *TRAIN_OVERRIDES,
        f"training.checkpoint_dir={tmp_path / 'ck'}",
        f"training.output_dir={tmp_path / 'out'}",
    ]
    assert main(["train", *common, "training.num_epochs=8"]) == 0
    final = f"training.num_epochs={SENTENCE_EPOCHS}"
    assert main(["train", *common, final, "--resume", "auto"]) == 0
    resumed = load_checkpoint(str(tmp_path / "ck" / "last.pth"))["model"]
    straight = load_checkpoint(str(sentence_run["checkpoints"] / "last.pth"))["model"]
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


def test_task_and_architecture_must_agree(sentence_run: dict[str, Path], tmp_path: Path) -> None:
    cfg = load_config(None, ["model.arch=transformer"])
    assert cfg.task == "words"
    words_on_sentences = [
        "train",
        *data_overrides(sentence_run["root"]),
        *[o for o in TRAIN_OVERRIDES if not o.startswith("model.arch")],
        f"training.checkpoint_dir={tmp_path / 'ck'}",
        "training.num_epochs=1",
    ]
    assert main(words_on_sentences) == 2  # task sentences with the word classifier
    with pytest.raises(ConfigError, match="task=sentences"):
        from ssr.model import build_model
        from ssr.training.ctc import check_task_model

        check_task_model(build_model(cfg.model, 29), cfg.model_copy(update={"task": "sentences"}))


def _raw_splits(root: Path, texts: dict[str, str], samples: int = 1500) -> list[str]:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for i, (name, text) in enumerate(texts.items()):
            emg = rng.standard_normal((samples, 8)).astype(np.float32)
            write_native(root / split / "s1" / f"{name}{i}.npz", emg, text, 1000)
    return [*OVERRIDES, *(f"data.{s}_dir={root / s}" for s in ("train", "val", "test"))]


def test_a_transcript_outside_the_units_is_refused_naming_the_file(tmp_path: Path) -> None:
    args = _raw_splits(tmp_path, {"ok": "the cat", "bad": "it costs 5 euros"})
    out = tmp_path / "processed"
    with pytest.raises(DataError, match=r"bad1\.npz: transcript 'it costs 5 euros' holds.*'5'"):
        run_preprocess(load_config(None, [*args, f"data.processed_dir={out}"]))
    assert not out.exists()  # nothing half-written


def test_a_transcript_longer_than_the_frames_is_refused(tmp_path: Path) -> None:
    long = "a very long sentence that no short recording can carry"
    args = _raw_splits(tmp_path, {"short": "hi", "long": long}, samples=600)
    with pytest.raises(DataError, match=r"long1\.npz: transcript of 54 characters needs"):
        run_preprocess(load_config(None, [*args, f"data.processed_dir={tmp_path / 'p'}"]))


def test_a_sentence_training_tracks_transcript_tables_and_posteriorgrams(
    sentence_run: dict[str, Path], mlflow_server, tmp_path: Path, one_thread: None
) -> None:
    """One epoch with MLflow (real server) and W&B (offline): the reference/hypothesis table
    and the posteriorgram of the validation epoch reach both."""
    experiment = f"sent-{uuid.uuid4().hex[:8]}"
    args = [
        "train",
        *data_overrides(sentence_run["root"]),
        *[o for o in TRAIN_OVERRIDES if not o.startswith("tracking.")],
        f"tracking.mlflow.tracking_uri={mlflow_server.uri}",
        f"tracking.mlflow.experiment={experiment}",
        "training.num_epochs=1",
        f"training.checkpoint_dir={tmp_path / 'ck'}",
        f"training.output_dir={tmp_path / 'out'}",
    ]
    assert main(args) == 0
    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert "val/cer" in run.data.metrics and "val/session/s2/cer" in run.data.metrics
    tables = [a.path for a in client.list_artifacts(run.info.run_id, "tables/val/transcripts")]
    assert tables == ["tables/val/transcripts/step-000001.json"]
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, tables[0], str(tmp_path))).read_text()
    )
    assert table["columns"][:3] == ["utterance", "reference", "hypothesis"]
    assert len(table["data"]) == 4  # every validation utterance
    (wb,) = offline_runs(tmp_path)  # WANDB_DIR is tmp_path (conftest)
    assert [step for step, _ in wb.series("val/transcripts/_type", "epoch")] == [1]
    assert wb.series("val/posteriorgram/_type", "epoch")
