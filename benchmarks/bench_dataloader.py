"""Data loading against training: can the memory-mapped loader keep the trainer fed?

Measures batches per second of ``ProcessedSplit`` + ``collate`` through a ``DataLoader``
(num_workers 0 and 2) on a preprocessed synthetic data set, and training steps per second
(forward, backward, clipping, AdamW step, as in the trainer) of the seed-sized and the small
model on the same batches, in one run. The ratio loader/train must be far above 1.

    .venv/bin/python benchmarks/bench_dataloader.py            # full
    .venv/bin/python benchmarks/bench_dataloader.py --quick    # CI-sized, small model only
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

from common import (
    SMALL_MODEL,
    BenchData,
    add_common_args,
    make_data,
    print_machine,
    print_table,
    run_main,
    set_threads,
)


def loader_batches_per_s(root: Path, batch_size: int, workers: int, batches: int) -> float:
    """Batches per second drawn from a shuffled DataLoader over the train split (warm)."""
    import torch
    from torch.utils.data import DataLoader

    from ssr.data.processed import ProcessedSplit, collate

    split = ProcessedSplit(root, "train")
    loader = DataLoader(
        split,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    stream = itertools.chain.from_iterable(itertools.repeat(loader))
    next(stream)  # worker start-up is not per-batch cost
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
        assert batch.x.ndim == 4
    return batches / (time.perf_counter() - start)


def train_steps_per_s(
    data: BenchData, overrides: list[str], batch_size: int, steps: int
) -> tuple[float, float]:
    """Training steps per second of the model in ``overrides``; also its parameter count (M)."""
    import torch
    from torch.utils.data import DataLoader

    from ssr.data.processed import ProcessedSplit, collate
    from ssr.model import build_model, parameter_count
    from ssr.training.runtime import autocast, autocast_dtype, select_device
    from ssr.training.trainer import clip_gradients

    cfg = data.config(overrides)
    tc = cfg.training
    device = select_device(tc.device)
    dtype = autocast_dtype(tc.precision, device)
    split = ProcessedSplit(data.processed_dir, "train")
    torch.manual_seed(tc.seed)
    loader = DataLoader(
        split,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
    )
    batches = [b.to(device) for b in itertools.islice(itertools.cycle(loader), steps + 1)]
    model = build_model(cfg.model, len(split.label_names)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)

    def step(batch) -> None:
        with autocast(device, dtype):
            logits = model(batch.x, batch.padding_mask())
        loss = criterion(logits.float(), batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), tc.grad_clip)
        opt.step()

    step(batches[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start), parameter_count(model) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (quick: 8)")
    parser.add_argument(
        "--loader-batches",
        type=int,
        default=None,
        help="timed loader batches (default 200, quick 20)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps per model (default 3, quick 1)",
    )
    args = parser.parse_args(argv)
    batch_size = args.batch_size or (8 if args.quick else 32)
    n_batches = args.loader_batches or (20 if args.quick else 200)
    steps = args.steps or (1 if args.quick else 3)

    set_threads(args.threads)
    print_machine("cpu")
    with tempfile.TemporaryDirectory(prefix="ssr-bench-") as tmp:
        data = make_data(args.workdir or tmp, args.quick)
        root = data.processed_dir
        from ssr.data.processed import ProcessedSplit

        split = ProcessedSplit(root, "train")
        print(
            f"data: {len(split)} train utterances, features memory-mapped from {root.name}/; "
            f"batch {batch_size}; {n_batches} loader batches, {steps} training steps timed"
        )
        loaders = {w: loader_batches_per_s(root, batch_size, w, n_batches) for w in (0, 2)}
        models = {"small (hidden 64, 2 layers, 4 heads)": SMALL_MODEL}
        if not args.quick:  # the seed-sized model's steps take too long for a CI run
            models = {"seed (configs/training_config.yaml)": [], **models}
        trains = {
            name: train_steps_per_s(data, ov, batch_size, steps) for name, ov in models.items()
        }
    rows = []
    for w, lps in loaders.items():
        for name, (sps, params) in trains.items():
            rows.append(
                [
                    w,
                    f"{lps:.1f}",
                    f"{name}, {params:.2f} M params",
                    f"{sps:.3f}",
                    f"{lps / sps:,.0f}x",
                ]
            )
    print_table(
        ["num_workers", "loader batches/s", "model", "train steps/s", "loader / train"],
        rows,
        [True, True, False, True, True],
    )
    worst = min(lps / sps for lps in loaders.values() for sps, _ in trains.values())
    print(
        f"\nThe loader is {worst:,.0f}x faster than the fastest training step measured: "
        f"{'never the bottleneck' if worst > 10 else 'A BOTTLENECK'} on this machine."
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
