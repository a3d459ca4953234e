"""task: sentences end to end on the tiny tone-burst data set (tests/helpers_sentences.py): a
tiny CTC model trained for seconds transcribes a held-out session far better than chance,
deterministically, resumes exactly, and ``ssr evaluate`` reports WER/CER for it and for the
baseline, with the lexicon and language model it carries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_sentences import SENTENCE_EPOCHS, TRAIN_OVERRIDES, data_overrides

from ssr.cli import main
from ssr.config import load_config
from ssr.errors import ConfigError
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
