"""Device, precision and seeding helpers, plus RNG state capture for exact resume."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ssr.errors import ConfigError, SSRError

log = logging.getLogger(__name__)

OOM_ADVICE = (
    "out of memory while training. Try, in this order: reduce training.batch_size "
    "(e.g. training.batch_size=16); reduce the model (model.hidden_size, model.num_layers); "
    "use bf16 on CUDA (training.precision=bf16); reduce training.num_workers if host memory "
    "ran out; check that no other process holds the GPU (nvidia-smi)."
)


class TrainingError(SSRError):
    """Training cannot go on (diverged loss, out of memory); the message says what to change."""


class TrainingOOMError(TrainingError):
    """Training ran out of (GPU or host) memory; the message says what to change."""


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and RuntimeErrors that report running out of memory."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()
    )


@contextlib.contextmanager
def oom_guard(device: torch.device) -> Iterator[None]:
    """Turn running out of memory into a :class:`TrainingOOMError` with advice."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if is_oom(exc):
            if device.type == "cuda":
                torch.cuda.empty_cache()
            raise TrainingOOMError(f"{OOM_ADVICE} ({str(exc).splitlines()[0]})") from None
        raise


def stop_workers(*loaders: Any) -> None:
    """Stop the persistent worker processes of DataLoaders now, not at garbage collection.

    Workers ignore SIGTERM (:mod:`ssr.training.signals`), so a worker still alive when the
    interpreter exits would block multiprocessing's exit handler (terminate, then join) forever.
    """
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device=cuda but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``training.precision`` on ``device`` (None: fp32).

    ``auto``: bf16 on a CUDA device that supports it, else fp16 (trained with a gradient
    scaler, see :func:`grad_scaler`); fp32 on CPU. ``bf16``/``fp16`` are used as asked, on
    CPU too.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for an autocast dtype from :func:`autocast_dtype`."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")  # type: ignore[arg-type]


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (a pass-through otherwise).

    fp16 gradients underflow without loss scaling; the scaler skips a step whose gradients
    overflowed (and lowers the scale), so such steps are not divergence.
    """
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device``; a no-op when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, salt: int = 0) -> int:
    """The seed of ``rank`` (``seed`` itself for rank 0 without ``salt``): ranks of one DDP job
    draw different dropout and augmentation, reproducibly."""
    if rank == 0 and salt == 0:
        return seed
    return (seed + 1_000_003 * rank + 7_919 * salt) % 2**63


def rng_state() -> dict[str, Any]:
    """Global RNG states as plain containers and tensors (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def restore_rank_rng(
    state: dict[str, Any], rank: int, world_size: int, seed: int, source: str
) -> bool:
    """Continue this rank's random streams saved in checkpoint ``state`` (``rng_ranks``).

    Returns False when the checkpoint was written by another number of processes: then the
    streams cannot continue, and each rank is reseeded from ``training.seed``, its rank and
    the step (deterministic), with a warning. ``seed``: ``training.seed``.
    """
    saved = int(state.get("world_size", 1))
    ranks = state.get("rng_ranks")
    if saved == world_size and isinstance(ranks, list) and len(ranks) == world_size:
        set_rng_state(ranks[rank])
    elif saved == world_size == 1:  # written before rng_ranks existed
        set_rng_state(state["rng"])
    else:
        seed_everything(rank_seed(seed, rank, salt=1 + int(state.get("global_step", 0))))
        if rank == 0:
            log.warning(
                "%s: written by %d process(es), resumed by %d: the per-rank random streams "
                "cannot continue exactly; each rank is reseeded from training.seed, its rank "
                "and the step%s",
                source,
                saved,
                world_size,
                "; the interrupted epoch restarts" if state.get("epoch_progress") else "",
            )
    return saved == world_size


_TRIM_EVERY = 50  # training steps between returns of freed heap memory to the OS


def release_freed_memory(step: int | None = None) -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere), every
    ``_TRIM_EVERY`` steps when ``step`` is given. Batches of varying length (sentences) leave
    glibc's heap fragmented: without this a small CTC model's process grew by ~0.5 GB per epoch
    on CPU; with it, it stays flat, at no measurable cost in speed."""
    if step is not None and step % _TRIM_EVERY:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl)
        return
    libc.malloc_trim(0)
