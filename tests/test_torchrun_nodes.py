"""Two `torchrun` nodes (one process each, static rendezvous on loopback, gloo): node 1 is
SIGKILLed mid-epoch, node 0 fails promptly instead of hanging, and both restarted with
``--resume auto`` finish the run with a valid checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_data import make_processed, tiny_overrides

from ssr.storage import read_pointer
from ssr.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4
STEPS = 12  # per epoch and rank: 96 train utterances, batch 4, 2 ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(rank: int, port: int, args: list[str], work: Path, tag: str) -> subprocess.Popen:
    log = open(work / f"{tag}-node{rank}.log", "w")  # noqa: SIM115 - closed with the process
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--node-rank",
        str(rank),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "-m",
        "ssr",
        "train",
        *args,
        "--resume",
        "auto",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)


def _text(work: Path, tag: str, rank: int) -> str:
    return (work / f"{tag}-node{rank}.log").read_text(errors="replace")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc): torchrun starts each worker in its own
    session, so killing the agent's process group would leave the worker running."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a node: its torchrun agent and every process below it, at once."""
    if proc.poll() is None:
        for pid in _tree(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(30)


def _wait(procs: list[subprocess.Popen], seconds: float) -> list[int | None]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.5)
    return [p.poll() for p in procs]


@pytest.mark.slow
def test_node_lost_mid_epoch_then_both_resume(tmp_path: Path) -> None:
    # long utterances and a 2-layer model: an epoch lasts seconds, so node 1 dies mid-epoch
    processed = make_processed(tmp_path / "processed", per_class=24, frames=(48, 64))
    ckdir = tmp_path / "checkpoints"
    args = tiny_overrides(
        processed,
        tmp_path,
        training__num_epochs=EPOCHS,
        training__batch_size=4,
        model__hidden_size=32,
        model__num_layers=2,
        training__log_interval=1,
        training__viz_interval=100,
        training__save_interval=100,
        training__dist_timeout_s=90,  # the bound if a lost peer went unnoticed otherwise
    )
    port = _free_port()
    nodes = [_node(r, port, args, tmp_path, "first") for r in (0, 1)]
    try:
        # node 1 dies (SIGKILL, agent and worker) once epoch 1 is saved and epoch 2 is running
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and all(p.poll() is None for p in nodes):
            saved = read_pointer(str(ckdir))
            if saved and saved[0].epoch >= 1 and "epoch 2 step" in _text(tmp_path, "first", 0):
                break
            time.sleep(0.2)
        logs = _text(tmp_path, "first", 0)[-3000:]
        assert all(p.poll() is None for p in nodes), f"a node ended early:\n{logs}"
        assert read_pointer(str(ckdir)) is not None, f"no checkpoint within 300 s:\n{logs}"
        _kill(nodes[1])
        lost = time.monotonic()
        (rc0,) = _wait(nodes[:1], 150)
        logs = _text(tmp_path, "first", 0)[-4000:]
        assert rc0 not in (None, 0), f"node 0 did not fail promptly:\n{logs}"
        failed_after = time.monotonic() - lost
        assert "lost another rank of the DDP job" in logs, logs
        pointer = read_pointer(str(ckdir))[0]
        assert pointer.epoch < EPOCHS
    finally:
        for p in nodes:
            _kill(p)
    assert failed_after < 150

    port = _free_port()
    nodes = [_node(r, port, args, tmp_path, "again") for r in (0, 1)]
    try:
        rcs = _wait(nodes, 400)
    finally:
        for p in nodes:
            _kill(p)
    out = _text(tmp_path, "again", 0)
    assert rcs == [0, 0], f"{rcs}\n{out[-3000:]}\n{_text(tmp_path, 'again', 1)[-2000:]}"
    assert "resuming from" in out
    state = load_checkpoint(str(ckdir / "last.pth"))
    assert state["epoch"] == EPOCHS and state["world_size"] == 2
    assert state["global_step"] == EPOCHS * STEPS
    assert len(state["rng_ranks"]) == 2
    assert read_pointer(str(ckdir))[0].epoch == EPOCHS
