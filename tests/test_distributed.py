"""The same ``ssr train`` under ``torchrun`` with 2 CPU processes (gloo, DDP)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_data import make_processed, tiny_overrides

from ssr.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path: Path) -> None:
    processed = make_processed(tmp_path / "processed", per_class=8)
    args = tiny_overrides(
        processed,
        tmp_path,
        training__num_epochs=2,
        training__save_interval=2,
        training__viz_interval=2,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "ssr",
            "train",
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    # Only rank 0 saves: one "saved" line per epoch, not two.
    assert log.count("epoch 1: saved") == 1 and log.count("epoch 2: saved") == 1
    ckdir = tmp_path / "checkpoints"
    assert {"best_model.pth", "last.pth", "checkpoint_epoch_2.pth"} <= {
        p.name for p in ckdir.glob("*.pth")
    }
    state = load_checkpoint(str(ckdir / "last.pth"))
    assert state["world_size"] == 2 and state["epoch"] == 2
    # 32 train utterances, batch 8 per rank over 2 ranks: 2 steps per epoch.
    assert state["global_step"] == 4
    assert {p.name for p in (tmp_path / "outputs").glob("*.png")} == {
        "confusion_matrix_epoch_2.png",
        "predictions_epoch_2.png",
    }


@pytest.mark.slow
def test_torchrun_two_processes_sentences(sentence_run: dict[str, Path], tmp_path: Path) -> None:
    """task sentences under DDP: CTC loss, the ranks' greedy transcripts gathered back into
    dataset order (4 validation utterances over 2 ranks), one checkpoint with the LM."""
    from helpers_sentences import TRAIN_OVERRIDES, data_overrides

    args = [
        *data_overrides(sentence_run["root"]),
        *TRAIN_OVERRIDES,
        "training.num_epochs=2",
        f"training.checkpoint_dir={tmp_path / 'checkpoints'}",
        f"training.output_dir={tmp_path / 'outputs'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "ssr", "train", *args]
    proc = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = load_checkpoint(str(tmp_path / "checkpoints" / "last.pth"))
    assert state["world_size"] == 2 and state["epoch"] == 2
    assert "language_model" in state and "val_cer" in state["history"][-1]
    assert (tmp_path / "outputs" / "posteriorgram_epoch_2.png").is_file()
