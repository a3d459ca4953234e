"""Single-process or ``torchrun`` (DistributedDataParallel) execution with the same code.

Under ``torchrun`` the environment carries ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`setup` joins the process group (NCCL on CUDA, gloo on CPU) with an explicit timeout.
Only rank 0 logs, saves and plots.

No rank may leave the others waiting in a collective: code that can fail on some ranks only
(rank 0's checkpoint upload, one rank's validation shard) runs inside :func:`shared_failure`,
which tells every rank whether any failed, so all raise the same :class:`RankFailedError`.
Rank 0's slow I/O is waited for on a separate gloo group with ``training.io_timeout_s``, so
the short ``training.dist_timeout_s`` of the training collectives does not apply to it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ssr.training.runtime import TrainingError

log = logging.getLogger(__name__)

_slow_group: Any = None  # gloo group with the long timeout, for waiting on rank 0's I/O
_timeouts: tuple[float, float] = (0.0, 0.0)


class RankFailedError(TrainingError):
    """A rank of a DDP job failed; every rank raises this with the same message."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank and world size from the ``torchrun`` environment (defaults: a single process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup(device: torch.device, timeout_s: float = 900, io_timeout_s: float = 3600) -> DistInfo:
    """Join the process group when launched by ``torchrun``; idempotent.

    ``timeout_s`` bounds every collective (a stuck rank fails the job instead of hanging it);
    ``io_timeout_s`` bounds the wait for rank 0's end-of-epoch I/O (see :func:`shared_failure`).
    """
    global _slow_group, _timeouts
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout_s))
        _slow_group = dist.new_group(backend="gloo", timeout=dt.timedelta(seconds=io_timeout_s))
        _timeouts = (float(timeout_s), float(io_timeout_s))
    return info


def teardown() -> None:
    """Leave the process group, if joined."""
    global _slow_group
    _slow_group = None
    if dist.is_initialized():
        dist.destroy_process_group()


def _lost_rank(what: str, exc: BaseException, slow: bool = False) -> TrainingError:
    timeout = _timeouts[1 if slow else 0]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrainingError(
        f"{what}: lost another rank of the DDP job (it died, or did not answer within "
        f"{timeout:g} s): {first[:300]}"
    )


@contextlib.contextmanager
def collective_errors(what: str, slow: bool = False) -> Iterator[None]:
    """A failed collective (a rank died, or the timeout passed) as one clear TrainingError."""
    try:
        yield
    except RuntimeError as exc:  # DistBackendError, gloo's "connection closed by peer", ...
        raise _lost_rank(what, exc, slow) from exc


_TRANSPORT_WORDS = ("gloo", "nccl", "connection", "peer", "socket", "timed out", "timeout")


def is_transport_error(exc: BaseException) -> bool:
    """True for errors of the process group's transport (a lost peer, a collective timeout)."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _TRANSPORT_WORDS)


@contextlib.contextmanager
def gradient_sync_errors() -> Iterator[None]:
    """Around ``backward()``: DDP all-reduces the gradients inside it, so a peer lost there is
    the same clear error as in any collective. Other errors pass unchanged."""
    try:
        yield
    except RuntimeError as exc:
        if dist.is_initialized() and is_transport_error(exc):
            raise _lost_rank("gradient all-reduce", exc) from exc
        raise


def barrier() -> None:
    if dist.is_initialized():
        with collective_errors("barrier"):
            dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    with collective_errors("sharing a flag"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over all ranks, in float64 (one all-reduce)."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    with collective_errors("summing over ranks"):
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    with collective_errors("gathering from ranks"):
        dist.all_gather_object(out, obj)
    return out


def raise_if_any_failed(error: BaseException | None, what: str, slow: bool = False) -> None:
    """Tell every rank whether any rank failed (``error``); if so, all raise the same error.

    In a single process ``error`` is re-raised as it is. ``slow``: the wait may be as long as
    rank 0's I/O (``training.io_timeout_s``), on a separate group.
    """
    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    group = _slow_group if slow else None
    device = torch.device("cpu") if slow or dist.get_backend() == "gloo" else _cuda()
    flag = torch.tensor([0 if error is None else 1], device=device)
    with collective_errors(what, slow):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    if not flag.item():
        return
    mine = None if error is None else f"{type(error).__name__}: {error}"
    if error is not None:
        log.error("rank %d failed %s", dist.get_rank(), what, exc_info=error)
    messages: list[str | None] = [None] * dist.get_world_size()
    with collective_errors(what, slow):
        dist.all_gather_object(messages, mine, group=group)
    rank, message = next((r, m) for r, m in enumerate(messages) if m is not None)
    others = [r for r, m in enumerate(messages) if m is not None and r != rank]
    also = f" (rank(s) {', '.join(map(str, others))} failed too)" if others else ""
    raise RankFailedError(f"rank {rank} failed {what}: {message}{also}") from error


@contextlib.contextmanager
def shared_failure(what: str, slow: bool = False) -> Iterator[None]:
    """Run the body on every rank; afterwards all ranks raise the same error if any failed."""
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # shared below; KeyboardInterrupt and SystemExit pass
        error = exc
    raise_if_any_failed(error, what, slow)


def _cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


@dataclass(frozen=True)
class StepShare:
    """What all ranks know after :func:`share_step`."""

    loss_sum: float  # sum of loss * batch size over ranks
    count: int  # utterances over ranks
    stop: bool  # some rank asked to stop after this step
    bad_ranks: list[int]  # ranks whose loss is not finite


def share_step(
    loss_sum: float, count: int, stop: bool, finite: bool, device: torch.device
) -> StepShare:
    """One all-reduce per training step, before backward: the summed loss, whether any rank
    must stop, and which ranks saw a non-finite loss (so every rank raises, none hangs)."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    values = [0.0] * (3 + world)
    values[0] = loss_sum if finite else 0.0
    values[1], values[2], values[3 + rank] = float(count), float(stop), float(not finite)
    total = sum_over_ranks(values, device)
    bad = [r for r in range(world) if total[3 + r] > 0]
    return StepShare(total[0], int(round(total[1])), total[2] > 0, bad)
