"""Training throughput and peak memory of the seed-sized model (``ssr`` model section).

Each variant (device, precision, torch.compile) runs in a fresh process so its peak memory is
its own. Prints a Markdown table.

    python benchmarks/bench_train.py --device cpu --steps 5
    python benchmarks/bench_train.py --device cuda --steps 50     # fp32/bf16 x eager/compile
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ssr.config import load_config
from ssr.model import build_model, parameter_count
from ssr.training.runtime import autocast

REPO = Path(__file__).resolve().parents[1]
SEED_ESTIMATES = "model ~100 MB, batch of 32 ~500 MB, ~2 GB GPU in total"


def frames_for(seconds: float, sampling_rate: int, window: int, hop: int) -> int:
    """STFT frames of an utterance of ``seconds`` (no padding at the edges)."""
    return 1 + (int(seconds * sampling_rate) - window) // hop


def run_variant(args: argparse.Namespace, device: str, precision: str, compiled: bool) -> dict:
    """Time ``args.steps`` training steps (after warm-up) in this process."""
    cfg = load_config(args.config)
    torch.manual_seed(0)
    dev = torch.device(device)
    frames = frames_for(
        args.seconds, cfg.data.sampling_rate, cfg.data.window_size, cfg.data.hop_length
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model(cfg.model, args.classes).to(dev)
    net = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.training.label_smoothing)
    b = args.batch_size
    x = torch.randn(b, frames, cfg.model.num_channels, cfg.model.input_size, device=dev)
    lengths = torch.randint(max(1, frames // 2), frames + 1, (b,), device=dev)
    mask = torch.arange(frames, device=dev)[None] >= lengths[:, None]
    y = torch.randint(0, args.classes, (b,), device=dev)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with autocast(dev, dtype):
            logits = net(x, mask)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        opt.step()

    for _ in range(args.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
        mem_kind = "max_memory_allocated"
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        mem_kind = "maxrss increase"
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": precision,
        "compile": compiled,
        "frames": frames,
        "samples_per_s": b * args.steps / elapsed,
        "step_ms": 1000 * elapsed / args.steps,
        "peak_mb": peak_mb,
        "memory": mem_kind,
        "params_m": parameter_count(model) / 1e6,
        "param_mb": parameter_count(model) * 4 / 2**20,
        "threads": torch.get_num_threads(),
    }


def variants(device: str, with_compile: bool) -> list[tuple[str, str, bool]]:
    if device == "cpu":
        out = [("cpu", "fp32", False)]
        return out + ([("cpu", "fp32", True)] if with_compile else [])
    return [("cuda", p, c) for p in ("fp32", "bf16") for c in (False, True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compile happens)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="utterance length (synth max)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--config", default=str(REPO / "configs" / "training_config.yaml"))
    parser.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on CPU")
    parser.add_argument("--quick", action="store_true", help="CI-sized: batch 4, 1 timed step")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: device,precision,compile
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.batch_size = 1, 1, 4

    if args.one:
        device, precision, compiled = args.one.split(",")
        print(json.dumps(run_variant(args, device, precision, compiled == "1")))
        return 0

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from common import print_machine  # benchmarks/common.py (this script's folder)

    print_machine(device)
    rows = []
    for dev, precision, compiled in variants(device, args.cpu_compile):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            f"{dev},{precision},{int(compiled)}",
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--batch-size",
            str(args.batch_size),
            "--seconds",
            str(args.seconds),
            "--classes",
            str(args.classes),
            "--config",
            args.config,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(
                f"{dev} {precision} compile={compiled}: failed\n{proc.stderr[-2000:]}",
                file=sys.stderr,
            )
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not rows:
        return 1
    first = rows[0]
    print(
        f"Model: {first['params_m']:.2f} M parameters = {first['param_mb']:.1f} MiB fp32 "
        f"weights (+2x that for AdamW state, +1x gradients). Seed estimate: {SEED_ESTIMATES}."
    )
    print(
        f"Batch {args.batch_size} x {first['frames']} frames ({args.seconds:g} s utterances), "
        f"{args.steps} timed steps after {args.warmup} warm-up.\n"
    )
    print(
        "| device | precision | compile | samples/s | step (ms) | peak memory (MiB) | measured as |"
    )
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['device']} ({r['threads']} threads) | {r['precision']} | "
            f"{'on' if r['compile'] else 'off'} | {r['samples_per_s']:.1f} | "
            f"{r['step_ms']:.0f} | {r['peak_mb']:.0f} | {r['memory']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
