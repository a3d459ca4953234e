"""Preprocessing throughput and memory: the vectorised feature path against a per-channel scipy
baseline, then whole ``ssr preprocess`` runs on data sets of N and 2N minutes.

Generates N minutes of synthetic 8-channel sEMG as utterances, runs both implementations on
one core in the same process, checks that their features agree, and prints a Markdown table.
A second table gives the real-time factor (seconds of EMG featurised per second, one core)
at the configured frame rate and at the sentence presets' 100 frames per second (32 ms windows,
10 ms hop, 16 bands; target: at least 500x real time). The last table gives the wall time and
peak resident memory of ``ssr preprocess`` (each in a fresh process) on written data sets of N
and 2N minutes: memory should not grow with the data.

    .venv/bin/python benchmarks/bench_preprocess.py --minutes 10
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from common import print_machine  # noqa: E402
from scipy import signal  # noqa: E402

from ssr.config import Config, load_config  # noqa: E402
from ssr.data.features import LOG_EPS, FeatureExtractor  # noqa: E402
from ssr.data.filters import FilterParams, notch_frequencies  # noqa: E402
from ssr.data.synth import SynthOptions, generate, sample_utterances  # noqa: E402

# The frame rate of configs/sentences_*.yaml: 32 ms windows every 10 ms, 16 bands (100 frames/s).
SENTENCE_RATE = ["data.window_size=32", "data.hop_length=10", "model.input_size=16"]
# Runs `ssr preprocess` in this process and reports its peak resident set size (KiB on Linux).
_MEASURE = (
    "import resource, sys\n"
    "from ssr.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('maxrss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def preprocess_run(
    per_word: int, workdir: Path, overrides: list[str]
) -> tuple[float, float, float, float]:
    """Write synthetic EMG (10 words, ``per_word`` utterances each), run ``ssr preprocess``.

    Returns (minutes of EMG, raw MB on disk, wall seconds, peak resident MiB of the process).
    """
    raw = workdir / f"raw-{per_word}"
    # at least one utterance of every word in each of the default 9 sessions
    summary = generate(raw, SynthOptions(vocab=10, per_word=max(per_word, 9)))
    minutes = sum(split["seconds"] for split in summary["splits"].values()) / 60
    size = sum(f.stat().st_size for f in raw.rglob("*") if f.is_file()) / 1e6
    args = [f"data.{s}_dir={raw / s}" for s in ("train", "val", "test")]
    args.append(f"data.processed_dir={workdir / f'processed-{per_word}'}")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, "preprocess", *args, *overrides],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ssr preprocess failed:\n{proc.stderr[-2000:]}")
    kib = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("maxrss_kib")]
    return minutes, size, seconds, int(kib[-1]) / 1024


def baseline_features(
    emg: np.ndarray, cfg: Config, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """Straightforward reference: per channel, iirnotch+filtfilt, butter+filtfilt, stft."""
    d = cfg.data
    fs = d.sampling_rate
    notches = [signal.iirnotch(f, d.notch_q, fs=fs) for f in notch_frequencies(_params(cfg))]
    band = signal.butter(d.filter_order, [d.bandpass_low, d.bandpass_high], "bandpass", fs=fs)
    window = signal.get_window("hann", d.window_size)
    per_channel = []
    for c in range(emg.shape[1]):
        x = emg[:, c].astype(np.float64)
        for b, a in notches:
            x = signal.filtfilt(b, a, x)
        x = signal.filtfilt(*band, x)
        x = (x - mean[c]) / std[c]
        _, _, z = signal.stft(
            x, fs=fs, window=window, nperseg=d.window_size,
            noverlap=d.window_size - d.hop_length, boundary=None, padded=False,
            detrend=False, scaling="psd",
        )  # fmt: skip
        power = (np.abs(z) ** 2 * fs)[1:]  # (bins, frames), DC dropped
        bands = power.reshape(cfg.model.input_size, -1, power.shape[1]).mean(axis=1)
        per_channel.append(np.log(bands + LOG_EPS).T)
    return np.stack(per_channel, axis=1).astype(np.float32)


def realtime_factor(
    emgs: list[np.ndarray], cfg: Config, mean: np.ndarray, std: np.ndarray, repeats: int = 3
) -> tuple[float, float]:
    """Seconds of EMG per second of the vectorised features of ``cfg`` (filter, normalise,
    features; best of ``repeats`` passes, so a busy machine's slowest moments drop out), and
    frames per second of EMG."""
    extractor = FeatureExtractor.from_config(cfg, mean, std)
    seconds = sum(e.shape[0] for e in emgs) / cfg.data.sampling_rate
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = sum(extractor(e).shape[0] for e in emgs)
        best = min(best, time.perf_counter() - t0)
    return seconds / best, frames / seconds


def _params(cfg: Config) -> FilterParams:
    return FeatureExtractor.from_config(cfg, np.zeros(8), np.ones(8)).filter_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of EMG (10)")
    parser.add_argument("--config", default=None, help="config for the data.* parameters")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)

    opts = SynthOptions(min_duration=1.0, max_duration=2.0, powerline_freq=cfg.data.powerline_freq)
    count = max(1, int(args.minutes * 60 / 1.5))
    emgs = [emg for _, emg in sample_utterances(opts, count)]
    hours = sum(e.shape[0] for e in emgs) / cfg.data.sampling_rate / 3600

    probe = FeatureExtractor.from_config(cfg, np.zeros(8), np.ones(8))
    filtered = np.concatenate([probe.filter(e) for e in emgs[:50]])
    mean, std = filtered.mean(axis=0), filtered.std(axis=0)
    extractor = FeatureExtractor.from_config(cfg, mean, std)

    t0 = time.perf_counter()
    fast = [extractor(e) for e in emgs]
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = [baseline_features(e, cfg, extractor.mean, extractor.std) for e in emgs]
    t_slow = time.perf_counter() - t0

    assert all(a.shape == b.shape for a, b in zip(fast, slow, strict=True))
    edge = max(1, cfg.data.window_size // cfg.data.hop_length) + 1
    interior = np.concatenate(
        [np.abs(a - b)[edge:-edge].ravel() for a, b in zip(fast, slow, strict=True)]
    )
    every = np.concatenate([np.abs(a - b).ravel() for a, b in zip(fast, slow, strict=True)])
    med, p99 = float(np.median(interior)), float(np.percentile(interior, 99))
    print(f"{len(emgs)} utterances, {hours * 60:.1f} min of 8-channel EMG at "
          f"{cfg.data.sampling_rate} Hz; window {cfg.data.window_size}, hop {cfg.data.hop_length}, "
          f"{cfg.model.input_size} bands; 1 thread")  # fmt: skip
    print_machine("cpu")
    print()
    print("| implementation | wall time (s) | hours of EMG per second | speed-up |")
    print("|---|---:|---:|---:|")
    print(f"| per-channel scipy (filtfilt + stft) | {t_slow:.2f} | {hours / t_slow:.3f} | 1.0x |")
    print(f"| vectorised (sosfiltfilt + strided rfft) | {t_fast:.2f} | {hours / t_fast:.3f} | "
          f"{t_slow / t_fast:.1f}x |")  # fmt: skip
    print(f"\nfeature difference (log power): median {med:.2e}, 99th percentile {p99:.2e} away "
          f"from utterance edges; largest anywhere {every.max():.2e}")  # fmt: skip
    if med > 1e-3 or p99 > 0.05:
        raise SystemExit("FAILED: vectorised and baseline features disagree")

    sentence_cfg = load_config(args.config, [*args.overrides, *SENTENCE_RATE])
    print("\nreal-time factor on one core (seconds of EMG featurised per second, best of 3):\n")
    print("| features | window / hop (samples) | bands | frames per s of EMG | real-time factor "
          "| target |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|")
    for name, c in (("configured", cfg), ("sentence presets", sentence_cfg)):
        factor, rate = realtime_factor(emgs, c, mean, std)
        verdict = "" if c is cfg else ("PASS" if factor >= 500 else "MISS") + " (>= 500x)"
        print(f"| {name} | {c.data.window_size} / {c.data.hop_length} | {c.model.input_size} | "
              f"{rate:.1f} | {factor:,.0f}x | {verdict} |")  # fmt: skip

    config = ["--config", args.config] if args.config else []
    print("\n`ssr preprocess` end to end (read, check, filter, features, write), fresh process:\n")
    print("| data set (min of EMG) | raw size (MB) | wall time (s) | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|")
    per_word = max(5, round(args.minutes * 60 / 1.5 / 10))  # 10 words, 1-2 s utterances
    with tempfile.TemporaryDirectory(prefix="ssr-bench-preprocess-") as tmp:
        for n in (per_word, 2 * per_word):
            minutes, size, seconds, mib = preprocess_run(n, Path(tmp), [*config, *args.overrides])
            print(f"| {minutes:.1f} | {size:.1f} | {seconds:.2f} | {mib:.0f} |")


if __name__ == "__main__":
    main()
