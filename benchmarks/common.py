"""Helpers shared by the benchmark scripts: machine info, Markdown tables, timing, test data."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "training_config.yaml"
SMALL_CONFIG = REPO / "configs" / "small.yaml"  # the CPU-sized preset `make run-local` trains
if str(REPO) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo, first
    sys.path.insert(0, str(REPO))

# Benchmarks never talk to a tracker and never draw plots.
NO_TRACKING = [
    "tracking.mlflow.enabled=false",
    "tracking.wandb.enabled=false",
    "training.viz_interval=1000000",
]
# The model size of configs/small.yaml, as overrides of configs/training_config.yaml.
SMALL_MODEL = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4"]


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or the platform's best guess)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    """Total RAM in GiB (Linux), or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, torch, device, load."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device"] = f"cuda ({torch.cuda.get_device_name(0)})"
    try:
        info["load_1min"] = round(os.getloadavg()[0], 1)
    except OSError:
        info["load_1min"] = None
    return info


def print_machine(device: str = "cpu") -> dict[str, Any]:
    """Print one ``machine:`` line and return the info."""
    info = machine_info(device)
    mem = f"{info['memory_gib']:.0f} GiB RAM" if info["memory_gib"] else "RAM unknown"
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {mem}, torch {info['torch']} "
        f"({info['torch_threads']} threads), python {info['python']}, device {info['device']}, "
        f"load average {info['load_1min']}"
    )
    return info


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None
) -> str:
    """A Markdown table; ``numeric`` columns are right-aligned (default: all but the first)."""
    if numeric is None:
        numeric = [i > 0 for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None
) -> None:
    """Print :func:`markdown_table` with a blank line before it."""
    print()
    print(markdown_table(headers, rows, numeric))


@dataclass
class Timing:
    """Repeated wall-clock measurements of one operation, in seconds."""

    seconds: list[float]

    @property
    def total(self) -> float:
        return sum(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100), linear interpolation."""
        xs = sorted(self.seconds)
        if len(xs) == 1:
            return xs[0]
        pos = (len(xs) - 1) * q / 100
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, timing each call."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return Timing(out)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--quick`` (CI-sized run) and ``--workdir`` (keep generated data; default: temp dir)."""
    parser.add_argument("--quick", action="store_true", help="CI-sized run (seconds)")
    parser.add_argument(
        "--workdir", default=None, help="where to write data and models (default: a temp dir)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice; 1 is faster on a busy machine)",
    )


def run_main(main: Callable[[], int]) -> int:
    """Run a benchmark's ``main``; an :class:`~ssr.errors.SSRError` prints one line, exit 2."""
    from ssr.errors import SSRError

    try:
        return main()
    except SSRError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return 2


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch intra-op threads (also for child processes); None keeps the default."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@dataclass
class BenchData:
    """A synthetic data set, raw and preprocessed, and the config that points at it."""

    root: Path
    cfg: Any  # ssr.config.Config
    processed_dir: Path
    raw_dirs: dict[str, Path]
    overrides: list[str]  # what ``cfg`` adds to configs/training_config.yaml

    def config(self, extra: Sequence[str] = (), config: str | os.PathLike[str] = CONFIG) -> Any:
        """The config file ``config`` pointed at this data set, with ``extra`` overrides."""
        from ssr.config import load_config

        return load_config(config, [*self.overrides, *extra])


def synth_options(quick: bool, seed: int = 0) -> Any:
    """Synthetic-data options: the documented defaults, or a tiny set for ``--quick``."""
    from ssr.data.synth import SynthOptions

    if quick:
        return SynthOptions(vocab=4, per_word=5, sessions=5, train_sessions=3, seed=seed)
    return SynthOptions(seed=seed)


def make_data(
    root: str | os.PathLike[str],
    quick: bool,
    overrides: Sequence[str] = (),
    seed: int = 0,
    options: Any = None,
    name: str | None = None,
) -> BenchData:
    """Generate synthetic EMG under ``root/<name>`` and preprocess it (reused when present).

    ``options`` (``SynthOptions``) replaces :func:`synth_options`; ``name`` defaults to
    ``synth`` or ``synth-quick``.
    """
    from ssr.config import load_config
    from ssr.data.preprocess import run_preprocess
    from ssr.data.synth import generate

    out = Path(root) / (name or ("synth-quick" if quick else "synth"))
    raw = {name: out / name for name in ("train", "val", "test")}
    processed = out / "processed"
    if not (out / "synth.json").is_file():
        generate(out, options or synth_options(quick, seed))
    ov = [
        *(f"data.{name}_dir={path}" for name, path in raw.items()),
        f"data.processed_dir={processed}",
        f"training.seed={seed}",
        *NO_TRACKING,
        *overrides,
    ]
    cfg = load_config(CONFIG, ov)
    if not (processed / "manifest.json").is_file():
        run_preprocess(cfg)
    return BenchData(out, cfg, processed, raw, ov)
