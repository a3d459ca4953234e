"""Inference on raw EMG: latency per utterance and throughput of the shipped pyfunc model (CPU).

The path a user takes: ``mlflow.pyfunc.load_model(uri).predict(DataFrame({"emg": [...]}))``
on 2 s, 8-channel recordings at 1000 Hz; the model filters, extracts features and classifies.
Without ``--model-uri`` it logs the seed-sized and the small model (random weights: speed does
not depend on them) with the processed data set's manifest to a throw-away SQLite MLflow store.

    .venv/bin/python benchmarks/bench_inference.py
    .venv/bin/python benchmarks/bench_inference.py --quick
    .venv/bin/python benchmarks/bench_inference.py --model-uri models:/ssr-emg/1   # yours
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    SMALL_MODEL,
    BenchData,
    add_common_args,
    make_data,
    print_machine,
    print_table,
    run_main,
    set_threads,
    time_calls,
)

SECONDS = 2.0


def log_random_model(data: BenchData, overrides: list[str], workdir: Path, name: str) -> str:
    """Log an untrained model of ``overrides``' size as the ssr pyfunc; return its URI."""
    import mlflow
    import torch
    from safetensors.torch import save_file

    from ssr.data.processed import read_manifest
    from ssr.model import build_model
    from ssr.registry.pyfunc_model import MANIFEST, MODEL_INFO, WEIGHTS, EmgClassifier
    from ssr.registry.register import pip_requirements

    cfg = data.config(overrides)
    manifest = read_manifest(data.processed_dir)
    labels = list(manifest["labels"])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(labels)).eval()
    files = workdir / name
    files.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, files / "w.safetensors")
    (files / "model_info.json").write_text(
        json.dumps({"model": cfg.model.model_dump(), "labels": labels})
    )
    (files / "manifest.json").write_text(json.dumps(manifest))
    artifacts = {
        WEIGHTS: str(files / "w.safetensors"),
        MODEL_INFO: str(files / "model_info.json"),
        MANIFEST: str(files / "manifest.json"),
    }
    with mlflow.start_run(run_name=f"bench-{name}"):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=EmgClassifier(),
            artifacts=artifacts,
            pip_requirements=pip_requirements(),
        )
    return info.model_uri


def recordings(count: int) -> list[Any]:
    """``count`` synthetic raw recordings of exactly :data:`SECONDS` s."""
    from ssr.data.synth import SynthOptions, sample_utterances

    opts = SynthOptions(min_duration=SECONDS, max_duration=SECONDS)
    return [emg for _, emg in sample_utterances(opts, count)]


def bench_model(
    uri: str, label: str, emgs: list[Any], repeats: int, batch: int, batch_repeats: int
) -> list[list[str]]:
    """Rows: single-utterance latency and batched throughput of the model at ``uri``."""
    import pandas as pd

    from ssr.model import parameter_count
    from ssr.registry.pyfunc_model import load_pyfunc

    loaded, inner = load_pyfunc(uri)
    params = parameter_count(inner.model) / 1e6
    frames = [pd.DataFrame({"emg": [emg]}) for emg in emgs]
    it = iter(range(10**9))

    def one() -> None:
        out = loaded.predict(frames[next(it) % len(frames)])
        assert len(out) == 1

    single = time_calls(one, repeats, warmup=2)
    feats = time_calls(lambda: inner.featurise([emgs[0]]), repeats, warmup=1)
    big = pd.DataFrame({"emg": [emgs[i % len(emgs)] for i in range(batch)]})
    batched = time_calls(lambda: loaded.predict(big), batch_repeats, warmup=1)
    name = f"{label}, {params:.2f} M params"
    share = f"{100 * feats.median / single.median:.0f}%"
    return [
        [name, "1", f"{1000 * single.percentile(50):.1f}", f"{1000 * single.percentile(95):.1f}",
         f"{repeats / single.total:.1f}", share],
        [name, str(batch), f"{1000 * batched.percentile(50):.1f}",
         f"{1000 * batched.percentile(95):.1f}", f"{batch * batch_repeats / batched.total:.1f}",
         ""],
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--model-uri", default=None, help="benchmark this logged/registered model")
    parser.add_argument("--repeats", type=int, default=None, help="single-utterance calls (100)")
    parser.add_argument("--batch", type=int, default=None, help="rows per batched call (32)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 100)
    batch_repeats = 1 if args.quick else 10
    batch = args.batch or (8 if args.quick else 32)

    import mlflow
    from mlflow.tracking import MlflowClient

    from ssr.tracking.mlflow_backend import ensure_experiment

    set_threads(args.threads)
    print_machine("cpu")
    emgs = recordings(8)
    with tempfile.TemporaryDirectory(prefix="ssr-bench-") as tmp:
        work = Path(args.workdir or tmp)
        if args.model_uri:
            targets = {args.model_uri: args.model_uri}
        else:
            mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
            # artifacts beside the throw-away database, not in ./mlruns
            mlflow.set_experiment(
                experiment_id=ensure_experiment(MlflowClient(), "ssr-bench-inference")
            )
            data = make_data(work, quick=True)  # only its manifest (filters, statistics) matters
            sizes = {"small": (SMALL_MODEL, "small (hidden 64, 2 layers)")}
            if not args.quick:  # the seed-sized model takes too long for a CI run
                sizes = {"seed": ([], "seed (configs/training_config.yaml)"), **sizes}
            targets = {
                log_random_model(data, ov, work, name): label for name, (ov, label) in sizes.items()
            }
        rows = []
        for uri, label in targets.items():
            rows += bench_model(uri, label, emgs, repeats, batch, batch_repeats)
    print(
        f"input: {SECONDS:g} s x 8 channels raw EMG at 1000 Hz per utterance (DataFrame 'emg' "
        f"column) through mlflow.pyfunc.load_model(...).predict; {repeats} single calls, "
        f"{batch_repeats} batched calls"
    )
    print_table(
        ["model", "batch", "p50 latency (ms)", "p95 latency (ms)", "utterances/s",
         "feature extraction share"],
        rows, [False, True, True, True, True, True],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
