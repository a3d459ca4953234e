"""What a user sees when things go wrong or run unattended: no progress-bar spam in logs,
no silently mixed checkpoint folders, evaluation runs named after the model evaluated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_data import make_processed, tiny_overrides
from wandb_offline import offline_runs

from ssr.cli import main
from ssr.progress import interactive, progress_bar

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_processed(tmp_path_factory.mktemp("data") / "processed", n_classes=2, per_class=4)


def test_no_progress_bars_when_output_is_not_a_terminal(processed: Path, tmp_path: Path) -> None:
    args = tiny_overrides(processed, tmp_path, training__num_epochs=2)
    env = {k: v for k, v in os.environ.items() if k != "SSR_PROGRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "ssr", "train", *args],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-2000:]
    epochs = [line for line in proc.stderr.splitlines() if ": train loss " in line]
    assert len(epochs) == 2 and "epoch 1:" in epochs[0] and "epoch 2:" in epochs[1]


def test_progress_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSR_PROGRESS", "1")
    assert interactive() and not progress_bar(range(3), desc="x").disable
    monkeypatch.setenv("SSR_PROGRESS", "0")
    assert not interactive() and progress_bar(range(3), desc="x").disable
    monkeypatch.delenv("SSR_PROGRESS")
    assert not interactive()  # pytest captures stderr: not a terminal


def test_second_training_into_a_used_checkpoint_dir(
    processed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tiny_overrides(processed, tmp_path, training__num_epochs=2)
    assert main(["train", *first]) == 0
    ckdir = tmp_path / "checkpoints"
    assert (ckdir / "checkpoint_epoch_2.pth").is_file()
    before = sorted(p.name for p in ckdir.rglob("*") if p.is_file())
    capsys.readouterr()

    second = tiny_overrides(processed, tmp_path, training__num_epochs=1, training__seed=7)
    assert main(["train", *second]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ssr train: error: {ckdir}: holds checkpoints of another training")
    assert "a run at epoch 2" in err and "--resume auto" in err and "--overwrite" in err
    assert sorted(p.name for p in ckdir.rglob("*") if p.is_file()) == before  # untouched

    assert main(["train", *second, "--overwrite"]) == 0
    assert not (ckdir / "checkpoint_epoch_2.pth").exists()  # nothing of the old run is left
    from ssr.training.checkpoint import load_checkpoint

    assert load_checkpoint(str(ckdir / "last.pth"))["epoch"] == 1


def test_evaluate_run_is_named_after_the_checkpoints_model(processed: Path, tmp_path: Path) -> None:
    args = tiny_overrides(processed, tmp_path, training__num_epochs=1)
    assert main(["train", *args]) == 0
    best = str(tmp_path / "checkpoints" / "best_model.pth")
    # the CLI config has the embedded model (hidden 256, 6 layers); the checkpoint h16, l1
    cli = [f"data.processed_dir={processed}", "training.device=cpu", "model.input_size=8"]
    cli += ["tracking.mlflow.enabled=false", "tracking.wandb.mode=offline"]
    out = str(tmp_path / "ev")
    assert main(["evaluate", "--checkpoint", best, "--out", out, *cli]) == 0
    (run,) = [r for r in offline_runs(tmp_path) if r.config.get("tags.job") == "evaluate"]
    assert run.display_name.startswith("evaluate-h16-l1-"), run.display_name
    assert run.config["model.hidden_size"] == 16


def test_mlflow_artifact_bars_are_off_when_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.delenv("SSR_PROGRESS", raising=False)
    db = tmp_path / "none" / "mlflow.db"
    assert main(["promote", f"tracking.mlflow.tracking_uri=sqlite:///{db}"]) == 2
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def _one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith(f"ssr {command}: error: ")]
    return line


def test_seed_beyond_64_bits_is_one_line(
    processed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in ("99999999999999999999999", "-1"):
        args = tiny_overrides(processed, tmp_path, training__seed=seed)
        assert main(["train", *args]) == 2
        assert "training.seed: Input should be" in _one_line_error(capsys, "train")
    assert not (tmp_path / "checkpoints").exists()


def test_text_file_as_checkpoint_is_one_line(
    processed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, these are my notes\n")
    args = tiny_overrides(processed, tmp_path)
    assert main(["evaluate", "--checkpoint", str(notes), *args]) == 2
    line = _one_line_error(capsys, "evaluate")
    assert line.endswith(f"{notes}: not an ssr checkpoint (not a file written by torch.save)")


def test_checkpoint_with_one_label_is_one_line(
    processed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssr.config import load_config
    from ssr.data.processed import read_manifest
    from ssr.model import build_model
    from ssr.training.checkpoint import feature_state, save_checkpoint

    args = tiny_overrides(processed, tmp_path)
    cfg = load_config(None, args)
    state = {
        "model": build_model(cfg.model, 2).state_dict(),
        "config": cfg.model_dump(),
        "labels": ["word0"],
        **feature_state(read_manifest(processed)),
    }
    path = save_checkpoint(state, str(tmp_path), "one_label.pth")
    assert main(["evaluate", "--checkpoint", path, *args]) == 2
    line = _one_line_error(capsys, "evaluate")
    assert f"{path}: 'labels' holds one label ('word0')" in line and "at least 2" in line


def test_metrics_json_list_is_one_line_at_register(
    processed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "metrics.json").write_text("[0.9, 0.8]")
    (eval_dir / "predictions.json").write_text('{"predictions": []}')
    db = tmp_path / "mlflow.db"
    args = [*tiny_overrides(processed, tmp_path), f"tracking.mlflow.tracking_uri=sqlite:///{db}"]
    ckpt = str(tmp_path / "best_model.pth")
    assert main(["register", "--checkpoint", ckpt, "--eval-dir", str(eval_dir), *args]) == 2
    line = _one_line_error(capsys, "register")
    assert line.endswith(f"{eval_dir / 'metrics.json'}: must be a JSON object, got list")
    assert not db.exists()  # refused before any server is touched
