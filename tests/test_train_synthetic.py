"""End to end on realistic synthetic sEMG: synth -> preprocess -> train -> evaluate on test
sessions never seen in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssr.cli import main
from ssr.data.synth import SynthOptions, generate
from ssr.evaluation import evaluate

VOCAB = 5


@pytest.mark.slow
def test_synthetic_words_are_learned_across_sessions(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    raw = tmp_path / "raw"
    generate(raw, SynthOptions(vocab=VOCAB, per_word=30, seed=3))
    args = [
        f"data.train_dir={raw / 'train'}",
        f"data.val_dir={raw / 'val'}",
        f"data.test_dir={raw / 'test'}",
        f"data.processed_dir={tmp_path / 'processed'}",
        "model.input_size=16",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=4",
        "model.dropout=0.1",
        "training.batch_size=16",
        "training.learning_rate=0.003",
        "training.num_epochs=15",
        "training.num_workers=0",
        "training.viz_interval=100",
        "training.save_interval=100",
        "training.device=cpu",
        f"training.checkpoint_dir={tmp_path / 'ck'}",
        f"training.output_dir={tmp_path / 'out'}",
        "tracking.mlflow.enabled=false",
        "tracking.wandb.enabled=false",
    ]
    assert main(["preprocess", *args]) == 0
    assert main(["train", *args]) == 0
    result = evaluate(
        str(tmp_path / "ck" / "best_model.pth"),
        "test",
        str(tmp_path / "processed"),
        str(tmp_path / "eval"),
        device="cpu",
    )
    chance = 1 / VOCAB
    assert result.num_samples >= 20
    print(f"synthetic test accuracy {result.accuracy:.3f} (chance {chance:.2f})")
    assert result.accuracy >= 2 * chance, result.metrics()
