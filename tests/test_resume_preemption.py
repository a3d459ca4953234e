"""Preemption and resume with checkpoints in S3: real `ssr train` processes against the loopback
S3 server, killed with SIGKILL and SIGTERM, must end with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from helpers_data import make_processed, tiny_overrides

from ssr.cli import main
from ssr.config import load_config
from ssr.storage import list_objects, publish, read_bytes, read_pointer, write_bytes
from ssr.training.checkpoint import find_resume, load_checkpoint
from ssr.training.job import run_training

EPOCHS = 3
STEPS = 6  # per epoch: 4 classes x 12 utterances, batch 8


def _overrides(processed: str, work: Path, checkpoint_dir: str) -> list[str]:
    return tiny_overrides(
        Path("unused"),
        work,
        data__processed_dir=processed,  # kept a string: Path() would mangle s3://
        training__num_epochs=EPOCHS,
        training__log_interval=1,
        training__viz_interval=100,
        training__save_interval=100,
        training__checkpoint_dir=checkpoint_dir,
        storage__cache_dir=str(work / "cache"),
    )


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssr", "train", *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # the reference runs single-threaded too
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 120) -> str:
    """Read the output until a line matches ``pattern``; return everything read."""
    deadline = time.monotonic() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"never saw {pattern!r}; output:\n{''.join(seen)[-3000:]}")


def _pointer_epoch(directory: str) -> int:
    found = read_pointer(directory)
    return found[0].epoch if found else 0


def _finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture
def setup(s3_env, tmp_path):
    bucket = s3_env.create_bucket(f"r-{uuid.uuid4().hex[:12]}")
    local = make_processed(tmp_path / "processed", per_class=12)
    processed = publish(local, f"s3://{bucket}/processed")
    return bucket, processed, local


@pytest.mark.slow
def test_killed_and_preempted_run_resumes_to_the_same_weights(setup, tmp_path):
    bucket, processed, local = setup
    ckdir = f"s3://{bucket}/run1"

    # reference: one uninterrupted run, in this process, all local
    ref_cfg = load_config(None, _overrides(str(local), tmp_path / "ref", str(tmp_path / "ref/ck")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(ref_cfg)
    finally:
        torch.set_num_threads(threads)
    reference = load_checkpoint(str(tmp_path / "ref/ck/last.pth"))

    args = _overrides(processed, tmp_path / "w", ckdir)
    # 1. SIGKILL (no notice) once latest.json shows a completed epoch
    proc = _start([*args, "--resume", "auto"], tmp_path)
    deadline = time.monotonic() + 120
    while _pointer_epoch(ckdir) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    _, out = _finish(proc)
    killed_at = _pointer_epoch(ckdir)
    assert 1 <= killed_at < EPOCHS, out[-3000:]

    # 2. resumed, then SIGTERM in the middle of the next epoch: it saves and exits with 143
    proc = _start([*args, "--resume", "auto"], tmp_path)
    before = _wait_for_line(proc, rf"epoch {killed_at + 1} step {STEPS * killed_at + 2}\b")
    proc.send_signal(signal.SIGTERM)
    rc, out = _finish(proc)
    out = before + out
    assert rc == 143, out[-3000:]
    assert "resuming from" in out
    pointer = read_pointer(ckdir)[0]
    state, source = find_resume(ckdir)
    assert source == f"{ckdir}/{pointer.checkpoint}"
    progress = state["epoch_progress"]
    assert state["epoch"] == killed_at + 1 and 2 <= progress["batches_done"] < STEPS
    assert pointer.global_step == STEPS * killed_at + progress["batches_done"]

    # 3. resumed mid-epoch, runs to the end: the same weights as the uninterrupted run
    proc = _start([*args, "--resume", "auto"], tmp_path)
    rc, out = _finish(proc)
    assert rc == 0, out[-3000:]
    assert f"continuing after batch {progress['batches_done']}" in out
    final = load_checkpoint(f"{ckdir}/last.pth")
    assert final["epoch"] == EPOCHS and final["global_step"] == reference["global_step"]
    assert final["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    assert [h["val_loss"] for h in final["history"]] == [
        h["val_loss"] for h in reference["history"]
    ]
    assert _pointer_epoch(ckdir) == EPOCHS


def test_resume_from_s3_uri_and_damaged_checkpoints(setup, tmp_path, capsys):
    bucket, processed, _ = setup
    ckdir = f"s3://{bucket}/run2"
    outputs = f"s3://{bucket}/outputs2"
    args = _overrides(processed, tmp_path / "w", ckdir) + [
        "training.viz_interval=1",
        f"training.output_dir={outputs}",
    ]
    args[args.index(f"training.num_epochs={EPOCHS}")] = "training.num_epochs=1"
    assert main(["train", *args, "--resume", "auto"]) == 0  # nothing to resume: fresh
    plots = {o.name for o in list_objects(outputs)}
    assert {"confusion_matrix_epoch_1.png", "predictions_epoch_1.png"} <= plots
    best = load_checkpoint(f"{ckdir}/best_model.pth")  # an explicit s3:// checkpoint loads
    assert best["epoch"] == 1

    more = [a for a in args if not a.startswith("training.num_epochs")] + ["training.num_epochs=2"]
    assert main(["train", *more, "--resume", f"{ckdir}/best_model.pth"]) == 0
    assert load_checkpoint(f"{ckdir}/last.pth")["epoch"] == 2

    # a corrupt object behind the pointer is refused, naming it
    pointer = read_pointer(ckdir)[0]
    uri = f"{ckdir}/{pointer.checkpoint}"
    data = bytearray(read_bytes(uri))
    data[len(data) // 2] ^= 0xFF
    write_bytes(uri, bytes(data))
    capsys.readouterr()
    assert main(["train", *more, "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert uri in err and "corrupt checkpoint: sha256" in err
    # a truncated explicit checkpoint fails torch.load: refused, naming the URI
    write_bytes(f"{ckdir}/best_model.pth", read_bytes(f"{ckdir}/best_model.pth")[:1000])
    assert main(["train", *more, "--resume", f"{ckdir}/best_model.pth"]) == 2
    err = capsys.readouterr().err
    assert f"{ckdir}/best_model.pth: corrupt or truncated checkpoint" in err
    assert json.loads(read_bytes(f"{ckdir}/latest.json"))["epoch"] == 2  # untouched
    assert not os.path.exists(tmp_path / "w" / "s3:")  # no s3 URI used as a local path
