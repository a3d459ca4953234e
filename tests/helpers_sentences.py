"""A tiny learnable sentence data set for tests: native recordings where each letter is a
~120 ms tone burst on its own (electrode, frequency) and a space a pause, in one recording
session per split (val and test are sessions never seen in training), preprocessed as
``task: sentences``; and the overrides of a tiny CTC training on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssr.config import load_config
from ssr.data.formats import write_native
from ssr.data.preprocess import run_preprocess
from ssr.sentences.units import CHARACTERS

RATE = 1000
FREQS = (90.0, 210.0, 300.0, 400.0)  # Hz; clear of the 60 Hz notches, one band each
WORDS = ("the", "cat", "sat", "on", "a", "mat", "big", "dog", "ran", "home", "quiz", "jump")
SPLITS = {"train": 80, "val": 4, "test": 10}
SESSIONS = {"train": "s1", "val": "s2", "test": "s3"}
EDGE = 0.03  # s of quiet before and after the sentence (a space is a longer pause)
OVERRIDES = [
    "task=sentences",
    "data.window_size=32",
    "data.hop_length=10",
    "model.input_size=16",
    "model.subsample=2",
]
# A tiny ctc_transformer that learns the tone-burst letters in seconds on one thread (val CER
# about 0.15 after 15 epochs).
SENTENCE_EPOCHS = 15
TRAIN_OVERRIDES = [
    "model.arch=ctc_transformer",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.num_layers=1",
    "model.dropout=0.0",
    "model.max_frames=512",
    "training.batch_size=8",
    "training.learning_rate=0.003",
    "training.label_smoothing=0.0",
    "training.num_workers=0",
    "training.augment.enabled=false",
    "training.patience=100",
    "training.lr_patience=100",
    "training.device=cpu",
    "decoding.lm_order=2",
    "tracking.mlflow.enabled=false",
    "tracking.wandb.enabled=false",
]


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 4))))


def letters_emg(text: str, rng: np.random.Generator) -> np.ndarray:
    """Background noise, then per letter a ~120 ms Hann-shaped tone on the letter's electrode
    at the letter's frequency; a space is a ~100 ms pause."""
    spans: list[tuple[int, int, int, float]] = []  # start, length, electrode, frequency
    t = int(EDGE * RATE)
    for char in text:
        if char == " ":
            t += int(rng.integers(80, 120))
            continue
        j = CHARACTERS.index(char) - 1  # apostrophe 0, letters 1..26
        n = int(rng.integers(100, 140))
        spans.append((t, n, j % 8, FREQS[j // 8] + rng.uniform(-5, 5)))
        t += n
    total = t + int(EDGE * RATE)
    emg = 0.3 * rng.standard_normal((total, 8))
    for start, n, electrode, freq in spans:
        phase = rng.uniform(0, 2 * np.pi)
        tone = np.sin(2 * np.pi * freq * np.arange(n) / RATE + phase) * np.hanning(n)
        emg[start : start + n, electrode] += 3.0 * rng.uniform(0.8, 1.2) * tone
    return emg.astype(np.float32)


def write_sentences(root: Path, seed: int = 7) -> dict[str, Path]:
    """Write the raw splits under ``root``; the split folders."""
    rng = np.random.default_rng(seed)
    for split, count in SPLITS.items():
        for i in range(count):
            text = sentence(rng)
            path = root / split / SESSIONS[split] / f"{i:03d}.npz"
            write_native(path, letters_emg(text, rng), text, RATE)
    return {split: root / split for split in SPLITS}


def data_overrides(root: Path) -> list[str]:
    """The data section of a config pointing at ``root``'s raw splits and processed set."""
    dirs = [f"data.{s}_dir={root / s}" for s in SPLITS]
    return [*OVERRIDES, *dirs, f"data.processed_dir={root / 'processed'}"]


def make_sentences(root: Path) -> Path:
    """Write the raw splits under ``root`` and preprocess them; the processed data set."""
    write_sentences(root)
    return run_preprocess(load_config(None, data_overrides(root)))
