"""Pipeline overhead: the local KFP run against the same steps run directly with the ssr CLI.

Runs ``python -m pipelines.run_local`` (kfp.local, one subprocess per step) and times it, with
each step's span taken from kfp's "Executing task" / "Task ... finished" log lines. Then runs
the same work as plain ``ssr`` commands in sequence (data synth + preprocess, train, evaluate,
register + promote) with the same model size, data and epochs, and compares.

    .venv/bin/python benchmarks/bench_pipeline.py              # 5 epochs, default synthetic data
    .venv/bin/python benchmarks/bench_pipeline.py --quick      # tiny data, 1 epoch
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, add_common_args, print_machine, print_table, run_main, set_threads

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '?([\w-]+)'?")
FINISHED = re.compile(r"Task '?([\w-]+)'? finished with status (\w+)")
STEPS = ("preprocess", "train", "evaluate", "register")
QUICK_SYNTH = ["--vocab=4", "--per-word=9"]  # every word in each of the 9 default sessions


def local_env(workdir: Path) -> dict[str, str]:
    """Local trackers in ``workdir``: MLflow on SQLite, W&B offline, no plot windows."""
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}",
        WANDB_MODE="offline",
        WANDB_DIR=str(workdir),
        MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    )
    env.pop("WANDB_API_KEY", None)
    return env


def run_pipeline(workdir: Path, epochs: int, synth: list[str]) -> tuple[float, dict[str, float]]:
    """Wall time of ``pipelines.run_local`` and each step's span from its log lines."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pipelines.run_local", "--workdir", str(workdir),
           "--epochs", str(epochs), "--min-accuracy", "0",
           *(f"--synth-arg={a}" for a in synth)]  # fmt: skip
    starts: dict[str, float] = {}
    spans: dict[str, float] = {}
    tail: list[str] = []
    t0 = time.perf_counter()
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    with subprocess.Popen(
        cmd, cwd=REPO, env=local_env(workdir), text=True, errors="replace", **pipe
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            now = time.perf_counter() - t0
            line = ANSI.sub("", raw.rstrip())
            tail = (tail + [line])[-40:]
            if m := FINISHED.search(line):
                if m.group(1) in starts:
                    spans[m.group(1)] = now - starts[m.group(1)]
            elif m := STARTED.search(line):
                starts[m.group(1)] = now
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipelines.run_local failed ({proc.returncode}):\n" + "\n".join(tail))
    return wall, spans


def run_direct(workdir: Path, epochs: int, synth: list[str]) -> dict[str, float]:
    """The pipeline's work as ``ssr`` commands in sequence; seconds per pipeline step."""
    from pipelines.run_local import LOCAL_CONFIG

    workdir.mkdir(parents=True, exist_ok=True)
    raw, processed = workdir / "raw", workdir / "processed"
    ckpt, report = workdir / "checkpoints", workdir / "report"
    common = ["--config", str(LOCAL_CONFIG), f"training.output_dir={workdir / 'outputs'}",
              f"data.processed_dir={processed}",
              *(f"data.{s}_dir={raw / s}" for s in ("train", "val", "test"))]  # fmt: skip
    plan = {
        "preprocess": [["data", "synth", "--out", str(raw), *synth], ["preprocess", *common]],
        "train": [["train", *common, f"training.checkpoint_dir={ckpt}",
                   f"training.num_epochs={epochs}", "--resume", "auto"]],
        "evaluate": [["evaluate", *common, "--checkpoint", str(ckpt / "best_model.pth"),
                      "--split", "test", "--out", str(report)]],
        "register": [["register", *common, "--checkpoint", str(ckpt / "best_model.pth"),
                      "--eval-dir", str(report)], ["promote", *common, "registry.min_accuracy=0"]],
    }  # fmt: skip
    env = local_env(workdir)
    out = {}
    for step, commands in plan.items():
        t0 = time.perf_counter()
        for args in commands:
            proc = subprocess.run([sys.executable, "-m", "ssr", *args], cwd=REPO, env=env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            # ssr promote exits 3 when the gate rejects: an outcome, not a failure
            if proc.returncode != 0 and not (args[0] == "promote" and proc.returncode == 3):
                raise SystemExit(
                    f"ssr {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
                )
        out[step] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (5, quick 1)")
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 5)
    synth = QUICK_SYNTH if args.quick else []

    set_threads(args.threads)
    print_machine("cpu")
    with tempfile.TemporaryDirectory(prefix="ssr-bench-") as tmp:
        work = Path(args.workdir or tmp)
        direct = run_direct(work / "direct", epochs, synth)
        wall, spans = run_pipeline(work / "pipeline", epochs, synth)
    print(f"run: configs/small.yaml, {epochs} epoch(s), "
          f"synthetic data {' '.join(synth) or '(defaults)'}; each ssr command and each kfp.local "
          "step is a fresh Python process")  # fmt: skip
    rows = []
    for step in STEPS:
        span = spans.get(step)
        rows.append([step, f"{direct[step]:.1f}", f"{span:.1f}" if span else "n/a",
                     f"{span - direct[step]:+.1f}" if span else "n/a"])  # fmt: skip
    total = sum(direct.values())
    rows.append(["**total**", f"{total:.1f}", f"{wall:.1f} (wall)", f"{wall - total:+.1f} "
                 f"({100 * (wall - total) / total:+.0f}%)"])  # fmt: skip
    print_table(
        ["step", "ssr CLI directly (s)", "kfp.local pipeline (s)", "pipeline overhead (s)"],
        rows,
        [False, True, True, True],
    )
    if spans:
        outside = wall - sum(spans.values())
        print(f"\nkfp.local time outside the steps (start-up, orchestration): {outside:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
