"""Inference on raw EMG: latency per utterance and throughput of the shipped pyfunc model (CPU),
in process and over HTTP.

In process: the path a Python user takes, ``load_pyfunc(uri)`` (the checked
``mlflow.pyfunc.load_model``) then ``.predict(DataFrame({"emg": [...]}))`` on 2 s, 8-channel
recordings at 1000 Hz; the model filters, extracts features and classifies. Over HTTP: the same
model behind ``ssr serve`` (MLflow's scoring server, one uvicorn worker) on a loopback port,
one ``POST /invocations`` per call with the JSON a client sends
(``{"dataframe_records": [{"emg": [[...], ...]}]}``, encoded before timing), measured from the
request until the parsed response. Without ``--model-uri`` it logs the seed-sized and the small
model (random weights: speed does not depend on them) with the processed data set's manifest
to a throw-away SQLite MLflow store, the way ``ssr register`` logs them (as code).

Sentences (``task: sentences``, unless ``--model-uri`` or ``--no-sentences``): an untrained
ctc_transformer of ``configs/sentences_small.yaml``'s size with the lexicon and word n-gram
language model of a small synthetic sentence data set (training transcripts + its
``lm_text.txt``), logged the same way, transcribes that set's test recordings one at a time:
milliseconds per second of EMG for the best path (greedy) and for the lexicon + LM beam search
(``decoding.beam_size`` 64), both including featurisation and the network, and for the whole
``predict`` (which gives both). Random weights leave the posteriors flat, so the beam keeps
every hypothesis within ``beam_threshold``: a pessimistic beam time.

    .venv/bin/python benchmarks/bench_inference.py
    .venv/bin/python benchmarks/bench_inference.py --quick
    .venv/bin/python benchmarks/bench_inference.py --model-uri models:/ssr-emg/1   # yours
    .venv/bin/python benchmarks/bench_inference.py --no-http    # in process only
    .venv/bin/python benchmarks/bench_inference.py --model-uri models:/ssr-emg-sentences/1
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import (
    NO_TRACKING,
    REPO,
    SMALL_MODEL,
    BenchData,
    Timing,
    add_common_args,
    make_data,
    print_machine,
    print_table,
    run_main,
    set_threads,
    time_calls,
)

SECONDS = 2.0
SENTENCE_CONFIG = REPO / "configs" / "sentences_small.yaml"


def log_random_model(data: BenchData, overrides: list[str], workdir: Path, name: str) -> str:
    """Log an untrained model of ``overrides``' size as the ssr pyfunc; return its URI."""
    import mlflow
    import torch
    from safetensors.torch import save_file

    from ssr.data.processed import ProcessedSplit, read_manifest
    from ssr.model import build_model
    from ssr.registry.pyfunc_model import MANIFEST, MODEL_INFO, WEIGHTS
    from ssr.registry.register import example_input, log_classifier

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
        # with a signature and input example, as `ssr register` logs it: the scoring server
        # enforces that signature, so the HTTP timings include it
        example = example_input(ProcessedSplit(data.processed_dir, "test"))
        info = log_classifier(artifacts, input_example=example)
    return info.model_uri


def log_sentence_model(work: Path, quick: bool) -> tuple[str, list[Any]]:
    """Synthesise and preprocess a small sentence data set, log an untrained
    ``configs/sentences_small.yaml`` model with its language model as `ssr register` does;
    the model's URI and the raw test recordings."""
    import mlflow
    import torch
    from safetensors.torch import save_file

    from ssr.config import load_config
    from ssr.data.formats import read_native
    from ssr.data.preprocess import run_preprocess
    from ssr.data.processed import ProcessedSplit
    from ssr.data.synth_sentences import LM_TEXT, SentenceOptions, generate_sentences
    from ssr.model import build_model
    from ssr.registry.packaging import example_input, log_classifier, sentence_artifacts
    from ssr.registry.pyfunc_model import MANIFEST, MODEL_INFO, WEIGHTS
    from ssr.sentences.lm import build_language_model, read_lm_text

    out = work / "sentences"
    opts = SentenceOptions(sentences=4 if quick else 8, sessions=3, train_sessions=1)
    opts.lm_sentences = 100 if quick else 3000
    if not (out / "synth.json").is_file():
        generate_sentences(out, opts)
    overrides = [
        *(f"data.{split}_dir={out / split}" for split in ("train", "val", "test")),
        f"data.processed_dir={out / 'processed'}",
        *NO_TRACKING,
    ]
    cfg = load_config(SENTENCE_CONFIG, overrides)
    if not (out / "processed" / "manifest.json").is_file():
        run_preprocess(cfg)
    train, test = (ProcessedSplit(cfg.data.processed_dir, s) for s in ("train", "test"))
    lm = build_language_model(
        [*train.texts, *read_lm_text(str(out / LM_TEXT))], cfg.decoding.lm_order
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, len(train.label_names)).eval()
    state = {
        "config": cfg.model_dump(),
        "labels": train.label_names,
        "model": model.state_dict(),
        "language_model": lm.to_state(),
    }
    files = work / "sentence-model"
    files.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, files / "w.safetensors")
    (files / "model_info.json").write_text(
        json.dumps({"model": cfg.model.model_dump(), "labels": train.label_names})
    )
    (files / "manifest.json").write_text(json.dumps(test.manifest))
    artifacts = {
        WEIGHTS: str(files / "w.safetensors"),
        MODEL_INFO: str(files / "model_info.json"),
        MANIFEST: str(files / "manifest.json"),
        **sentence_artifacts(state, files, "bench"),
    }
    with mlflow.start_run(run_name="bench-sentences"):
        info = log_classifier(artifacts, input_example=example_input(test))
    return info.model_uri, [read_native(source).emg for source in test.ids]


def is_sentence_model(uri: str) -> bool:
    """Whether the registered model at ``uri`` transcribes (``task: sentences``)."""
    from ssr.registry.pyfunc_model import load_classifier

    return load_classifier(uri).task == "sentences"


def bench_sentences(uri: str, emgs: list[Any], repeats: int) -> tuple[list[list[str]], str]:
    """Rows: milliseconds per second of EMG for one recording at a time, greedy, beam search
    and the whole predict; a line describing model and input."""
    import pandas as pd

    from ssr.model import parameter_count
    from ssr.registry.pyfunc_model import load_pyfunc
    from ssr.sentences.decoding import greedy_decode

    loaded, inner = load_pyfunc(uri)
    transcriber = inner.transcriber
    assert transcriber is not None, f"{uri}: a word model"
    rate = inner.extractor.sampling_rate
    seconds = [emg.shape[0] / rate for emg in emgs]
    frames = [pd.DataFrame({"emg": [emg]}) for emg in emgs]

    def per_second(fn: Any) -> tuple[list[float], list[float]]:
        """ms per s of EMG per call, and the share of it spent decoding."""
        fn(0)  # warm-up
        rates, shares = [], []
        for call in range(repeats):
            i = call % len(emgs)
            start = time.perf_counter()
            decode = fn(i)
            total = time.perf_counter() - start
            rates.append(1000 * total / seconds[i])
            shares.append(decode / total if decode is not None else float("nan"))
        return rates, shares

    def decoded(i: int, decode: Any) -> float:
        log_probs = inner.emissions(inner.featurise([emgs[i]]))[0]
        start = time.perf_counter()
        decode(log_probs)
        return time.perf_counter() - start

    def whole(i: int) -> None:
        assert len(loaded.predict(frames[i])) == 1

    cases = {
        "greedy (best path)": lambda i: decoded(i, lambda lp: greedy_decode(lp, inner.labels)),
        f"beam {transcriber.cfg.beam_size} + lexicon + {transcriber.lm.order}-gram LM": (
            lambda i: decoded(i, transcriber.beam.decode)
        ),
        "predict (both; the served path)": whole,
    }
    params = parameter_count(inner.model) / 1e6
    name = f"sentences small, {params:.2f} M params"
    rows = []
    for case, fn in cases.items():
        rates, shares = per_second(fn)
        t = Timing(rates)
        share = "" if all(x != x for x in shares) else f"{100 * statistics.median(shares):.0f}%"
        rows.append([
            name, case, f"{t.percentile(50):.1f}", f"{t.percentile(95):.1f}",
            f"{t.percentile(50) / 1000:.3f}", share,
        ])  # fmt: skip
    described = (
        f"sentences: {len(emgs)} recordings of {min(seconds):.1f}-"
        f"{max(seconds):.1f} s (8 channels, {rate:g} Hz), one per call, {repeats} calls; "
        f"lexicon {len(transcriber.lm.words)} words; decoding share = the decoder's part of "
        "the call (featurisation + network the rest)"
    )
    return rows, described


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def scoring_server(uri: str, log: Path, threads: int | None) -> Iterator[tuple[str, float]]:
    """``ssr serve`` of ``uri`` on a free loopback port: its URL and the seconds to /health."""
    port = _free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "ssr", "serve", "--model", uri, "--port", str(port)]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ssr serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.perf_counter() - start > 300:
                    raise RuntimeError("ssr serve did not answer /health within 300 s") from None
                time.sleep(0.2)
        yield url, time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _post(url: str, body: bytes) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["predictions"]


def bench_http(
    uri: str,
    label: str,
    emgs: list[Any],
    repeats: int,
    batch: int,
    batch_repeats: int,
    log: Path,
    threads: int | None,
    in_process_p50: dict[str, float],
) -> tuple[list[list[str]], float, float]:
    """Rows: per-request latency and throughput over HTTP; the server's start time (s) and the
    size of a one-recording request (kB)."""
    singles = [json.dumps({"dataframe_records": [{"emg": e.tolist()}]}).encode() for e in emgs]
    many = json.dumps(
        {"dataframe_records": [{"emg": emgs[i % len(emgs)].tolist()} for i in range(batch)]}
    ).encode()
    with scoring_server(uri, log, threads) as (url, started):
        it = iter(range(10**9))

        def one() -> None:
            assert len(_post(url, singles[next(it) % len(singles)])) == 1

        single = time_calls(one, repeats, warmup=2)
        batched = time_calls(lambda: _post(url, many), batch_repeats, warmup=1)
    rows = []
    for size, timing, calls in ((1, single, repeats), (batch, batched, batch_repeats)):
        p50 = 1000 * timing.percentile(50)
        rows.append([
            label, str(size), f"{p50:.1f}", f"{1000 * timing.percentile(95):.1f}",
            f"{size * calls / timing.total:.1f}", f"{p50 - in_process_p50[str(size)]:+.1f}",
        ])  # fmt: skip
    return rows, started, len(singles[0]) / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--model-uri", default=None, help="benchmark this logged/registered model")
    parser.add_argument("--repeats", type=int, default=None, help="single-utterance calls (100)")
    parser.add_argument("--batch", type=int, default=None, help="rows per batched call (32)")
    parser.add_argument("--no-http", action="store_true", help="skip the scoring-server runs")
    parser.add_argument(
        "--no-sentences", action="store_true", help="skip the task sentences model's rows"
    )
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 100)
    batch_repeats = 1 if args.quick else 10
    batch = args.batch or (8 if args.quick else 32)

    import mlflow
    from mlflow.tracking import MlflowClient

    from ssr.tracking.store import ensure_experiment

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
        rows, http_rows, starts = [], [], []
        for uri, label in targets.items():
            local = bench_model(uri, label, emgs, repeats, batch, batch_repeats)
            rows += local
            if args.no_http:
                continue
            if not args.model_uri:  # ssr serve reads the throw-away store
                os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
            p50 = {r[1]: float(r[2]) for r in local}
            log = work / f"serve-{len(starts)}.log"
            got, started, kb = bench_http(
                uri, label, emgs, repeats, batch, batch_repeats, log, args.threads, p50
            )
            http_rows += got
            starts.append(f"{label.split(' (')[0]} {started:.1f} s")
        sentence_rows, sentence_line = [], ""
        if args.model_uri and is_sentence_model(args.model_uri):  # on the 2 s recordings
            sentence_rows, sentence_line = bench_sentences(args.model_uri, emgs, repeats)
        elif not args.no_sentences and not args.model_uri:
            uri, sentence_emgs = log_sentence_model(work, args.quick)
            sentence_rows, sentence_line = bench_sentences(uri, sentence_emgs, repeats)
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
    if http_rows:
        print(
            f"\nover HTTP: ssr serve (MLflow's scoring server, 1 uvicorn worker) on loopback, "
            f"one POST /invocations per call ({kb:.0f} kB of JSON per recording, encoded "
            f"before timing); server start to /health: {', '.join(starts)}; overhead = HTTP "
            "p50 - in-process p50"
        )
        print_table(
            ["model", "rows per request", "p50 latency (ms)", "p95 latency (ms)",
             "utterances/s", "HTTP overhead at p50 (ms)"],
            http_rows, [False, True, True, True, True, True],
        )  # fmt: skip
    if sentence_rows:
        print(f"\n{sentence_line}")
        print_table(
            ["model", "decoding", "p50 ms per s of EMG", "p95 ms per s of EMG",
             "real-time factor (p50)", "decoding share"],
            sentence_rows, [False, False, True, True, True, True],
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
