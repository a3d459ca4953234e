"""DDP on CPU (gloo, 2 spawned processes): per-rank random streams, saved and restored per
rank; the train loss reduced over ranks; a failure on one rank ends every rank promptly with
the same error; rank 0's slow I/O does not trip the collective timeout of the others."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from helpers_data import make_processed, tiny_overrides

from ssr.config import load_config
from ssr.errors import CheckpointError, ConfigError
from ssr.training import distributed
from ssr.training.checkpoint import load_checkpoint
from ssr.training.distributed import DistInfo
from ssr.training.runtime import TrainingError, rank_seed, restore_rank_rng
from ssr.training.trainer import Trainer

WORLD = 2
TIMEOUT_S = 600  # a failure must end the ranks in seconds, far below this


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


class Recording(Trainer):
    """Records the initial weights, the RNG at each epoch start and this rank's own losses."""

    def _build(self) -> None:
        super()._build()
        params = torch.cat([p.detach().flatten() for p in self.model.parameters()])
        self.record: dict[str, Any] = {"init": _digest(params), "epoch_rng": {}, "local": []}
        real = self.criterion

        def criterion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            loss = real(logits, labels)
            n = len(labels)
            self.record["local"].append([self.epoch, float(loss.detach()) * n, n])
            return self._poison(loss)

        self.criterion = criterion  # type: ignore[assignment]

    def _poison(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def train_epoch(self) -> float:
        self.record["epoch_rng"][str(self.epoch)] = _digest(torch.get_rng_state())
        return super().train_epoch()


class NanOnRank1(Recording):
    def _poison(self, loss: torch.Tensor) -> torch.Tensor:
        bad = self.dist.rank == 1 and self.global_step == 1
        return loss * float("nan") if bad else loss


class SaveFailsOnRank0(Recording):
    def _save(self, improved: bool) -> None:
        raise CheckpointError("disk full (test)")


class SlowRank0IO(Recording):
    """Rank 0's end-of-epoch I/O takes longer than the collective timeout of the others."""

    def _end_epoch(self, val: dict[str, Any], row: dict[str, float], improved: bool) -> None:
        if self.epoch == 1:
            time.sleep(float(os.environ["SLOW_IO_S"]))
        super()._end_epoch(val, row, improved)


SCENARIOS = {"ok": SlowRank0IO, "resume": Recording, "nan": NanOnRank1, "save": SaveFailsOnRank0}


def _rank_main(rank: int, port: int, scenario: str, args: list[str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    result: dict[str, Any] = {}
    trainer = None
    start = time.monotonic()
    try:
        cfg = load_config(None, args)
        trainer = SCENARIOS[scenario](cfg)
        resume = os.environ.get("RESUME_FROM")
        fit = trainer.fit(resume=resume or None)
        result["history"] = fit.history
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["seconds"] = time.monotonic() - start
        result["record"] = getattr(trainer, "record", None)
        distributed.teardown()
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(scenario: str, args: list[str], out: Path, **env: str) -> list[dict[str, Any]]:
    """Both ranks in spawned processes; their results (bounded wait: never the suite timeout)."""
    out.mkdir(parents=True)
    os.environ.update(env)  # inherited by the spawned processes
    try:
        ctx = mp.start_processes(
            _rank_main,
            args=(_free_port(), scenario, args, str(out)),
            nprocs=WORLD,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + 300
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"{scenario}: the ranks did not end within 300 s")
    finally:
        for key in env:
            os.environ.pop(key, None)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 32 train utterances: batch 8 per rank over 2 ranks, 2 steps per epoch
    return make_processed(tmp_path_factory.mktemp("ddp") / "processed", per_class=8)


def _args(data: Path, work: Path, **extra: object) -> list[str]:
    values: dict[str, object] = {
        "training__num_epochs": 2,
        "training__viz_interval": 100,
        "training__dist_timeout_s": TIMEOUT_S,
        "training__io_timeout_s": TIMEOUT_S,
        **extra,
    }
    return tiny_overrides(data, work, **values)


@pytest.mark.slow
def test_per_rank_rng_saved_restored_and_reduced_loss(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # rank 0 sleeps 25 s in its end-of-epoch I/O, the collectives time out after 15 s:
    # the others wait on the long-timeout group, so the run still succeeds
    args = _args(data, tmp_path / "w", training__dist_timeout_s=15)
    ranks = _run("ok", args, tmp_path / "ok", SLOW_IO_S="25")
    for r in ranks:
        assert "error" not in r, r.get("error")
    rec = [r["record"] for r in ranks]
    assert rec[0]["init"] == rec[1]["init"]  # the same initial weights on both ranks
    for epoch in ("1", "2"):  # but their own dropout/augmentation streams
        assert rec[0]["epoch_rng"][epoch] != rec[1]["epoch_rng"][epoch]

    # the logged train loss is the mean over both ranks' utterances, not rank 0's
    history = ranks[0]["history"]
    for row in history:
        parts = [(s, n) for r in rec for e, s, n in r["local"] if e == row["epoch"]]
        expected = sum(s for s, _ in parts) / sum(n for _, n in parts)
        rank0 = [(s, n) for e, s, n in rec[0]["local"] if e == row["epoch"]]
        assert row["train_loss"] == pytest.approx(expected, rel=1e-9)
        assert row["train_loss"] != pytest.approx(sum(s for s, _ in rank0) / 16, rel=1e-9)

    ckpt = str(tmp_path / "w" / "checkpoints" / "last.pth")
    state = load_checkpoint(ckpt)
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD
    saved = [_digest(s["torch"]) for s in state["rng_ranks"]]
    assert saved[0] != saved[1]

    # resumed for a 3rd epoch: each rank continues from its own saved stream
    more = _args(data, tmp_path / "w", training__num_epochs=3)
    resumed = _run("resume", more, tmp_path / "resume", RESUME_FROM=ckpt)
    for r, res in enumerate(resumed):
        assert "error" not in res, res.get("error")
        assert res["record"]["epoch_rng"]["3"] == saved[r]
    assert load_checkpoint(ckpt)["epoch"] == 3

    # a single process continues the 2-process run: reseeded, with a warning, and finishes
    torch.set_num_threads(1)
    alone = Trainer(load_config(None, _args(data, tmp_path / "w", training__num_epochs=4)))
    with caplog.at_level(logging.WARNING, logger="ssr.training.runtime"):
        assert alone.fit(resume=ckpt).epochs_run == 4
    assert "written by 2 process(es), resumed by 1" in caplog.text
    assert load_checkpoint(ckpt)["world_size"] == 1


def test_another_world_size_reseeds_deterministically(caplog: pytest.LogCaptureFixture) -> None:
    state = {"world_size": 2, "rng_ranks": [{}, {}], "global_step": 5, "epoch_progress": None}
    draws = []
    for _ in range(2):
        torch.manual_seed(0)  # whatever came before does not matter
        assert not restore_rank_rng(state, rank=1, world_size=3, seed=42, source="ck.pth")
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])
    torch.manual_seed(rank_seed(42, 1, salt=6))
    assert torch.equal(draws[0], torch.rand(3))
    # rank 0 of the new world draws differently from rank 1
    restore_rank_rng(state, rank=0, world_size=3, seed=42, source="ck.pth")
    assert not torch.equal(draws[0], torch.rand(3))
    assert "ck.pth: written by 2 process(es), resumed by 3" in caplog.text


@pytest.mark.slow
def test_non_finite_loss_on_one_rank_ends_both(data: Path, tmp_path: Path) -> None:
    ranks = _run("nan", _args(data, tmp_path / "w"), tmp_path / "nan")
    errors = [r.get("error") for r in ranks]
    assert errors[0] == errors[1], errors
    assert errors[0].startswith("TrainingError: training loss became non-finite on rank(s) [1]")
    assert all(r["seconds"] < 120 for r in ranks), [r["seconds"] for r in ranks]


@pytest.mark.slow
def test_save_error_on_rank0_ends_both(data: Path, tmp_path: Path) -> None:
    ranks = _run("save", _args(data, tmp_path / "w"), tmp_path / "save")
    errors = [r.get("error") for r in ranks]
    assert errors[0] == errors[1], errors
    assert errors[0] == (
        "RankFailedError: rank 0 failed ending epoch 1: CheckpointError: disk full (test)"
    )
    assert all(r["seconds"] < 120 for r in ranks), [r["seconds"] for r in ranks]


def test_val_set_smaller_than_world_size_is_refused(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before any collective, identically on every rank (so none waits); here one
    rank of a pretended 64-process job: 16 validation utterances are too few."""
    monkeypatch.setattr(distributed, "setup", lambda *a, **k: DistInfo(rank=3, world_size=64))
    trainer = Trainer(load_config(None, _args(data, tmp_path)))
    with pytest.raises(ConfigError, match=r"validation split has 16 utterance\(s\), fewer than"):
        trainer.fit()


def test_a_peer_lost_in_backward_is_named(tmp_path: Path) -> None:
    """DDP all-reduces gradients inside backward(): a transport error there reads like any
    lost collective; an error of the model's own passes unchanged (a one-process group)."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        reset = RuntimeError(
            "[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"
        )
        lost = pytest.raises(TrainingError, match="gradient all-reduce: lost another rank")
        with lost, distributed.gradient_sync_errors():
            raise reset
        own = RuntimeError("Trying to backward through the graph a second time")
        with pytest.raises(RuntimeError) as caught, distributed.gradient_sync_errors():
            raise own
        assert caught.value is own
    finally:
        torch.distributed.destroy_process_group()
    # not distributed: nothing to translate
    with pytest.raises(RuntimeError) as caught, distributed.gradient_sync_errors():
        raise reset
    assert caught.value is reset
