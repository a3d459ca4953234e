"""What a registered ``task: sentences`` model adds to the word classifier: its lexicon, word
n-gram language model and decoding settings (artifacts of the model, plain text and JSON), and
the transcripts it answers with.

Artifacts (written by :func:`ssr.registry.packaging.sentence_artifacts` at registration; keys
in :mod:`ssr.registry.pyfunc_model`): the ARPA file KenLM loads (``language_model``), the
lexicon, one word a line (``lexicon``), and a JSON object ``{"task": "sentences", "decoding":
{...}, "lm_order": n}`` (``decoding``: the checkpoint's decoding section). Nothing is unpickled.

Output: one row per recording, :data:`COLUMNS`: ``text`` (lexicon-constrained beam search with
the language model), ``confidence`` (the beam's posterior of that transcript, in [0, 1]) and
``greedy_text`` (best path, no lexicon or language model).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssr.config import DecodingConfig
from ssr.errors import DataError, RegistryError
from ssr.sentences.decoding import BeamDecoder, Hypothesis, greedy_decode
from ssr.sentences.lm import LanguageModel

COLUMNS = ("text", "confidence", "greedy_text")


def decoding_info(cfg: DecodingConfig, lm: LanguageModel) -> dict[str, Any]:
    """The :data:`DECODING` artifact's content."""
    return {"task": "sentences", "decoding": cfg.model_dump(), "lm_order": lm.order}


class Transcriber:
    """CTC log-probabilities (frames, units) -> transcripts, with the model's lexicon and LM."""

    def __init__(
        self,
        labels: list[str],
        lm: LanguageModel,
        cfg: DecodingConfig,
        arpa_path: str | None = None,
    ) -> None:
        self.labels = list(labels)
        self.lm = lm
        self.cfg = cfg
        self.beam = BeamDecoder(self.labels, lm, cfg, arpa_path)
        self._lock = threading.Lock()  # one flashlight decoder: one search at a time

    @classmethod
    def from_files(cls, labels: list[str], arpa: str, lexicon: str, decoding: str) -> Transcriber:
        """The transcriber of a registered sentence model: its ARPA file, lexicon file and
        decoding JSON (RegistryError naming the file when one is unusable)."""
        try:
            info = json.loads(Path(decoding).read_text())
            cfg = DecodingConfig(**info["decoding"])
            words = Path(lexicon).read_text(encoding="utf-8").split()
            text = Path(arpa).read_text(encoding="utf-8")
            state = {"order": info["lm_order"], "words": words, "arpa": text}
            lm = LanguageModel.from_state(state, arpa)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, DataError) as exc:
            raise RegistryError(
                f"{decoding}: unusable sentence decoding artifacts ({type(exc).__name__}: {exc})"
            ) from None
        return cls(labels, lm, cfg, arpa_path=arpa)

    def decode(self, log_probs: np.ndarray) -> tuple[Hypothesis, Hypothesis]:
        """The beam-search (lexicon + LM) and greedy hypotheses of one utterance."""
        with self._lock:
            beam = self.beam.decode(log_probs)
        return beam, greedy_decode(log_probs, self.labels)

    def frame(self, emissions: list[np.ndarray]) -> pd.DataFrame:
        """The output DataFrame (:data:`COLUMNS`) for per-utterance log-probabilities."""
        decoded = [self.decode(e) for e in emissions]
        return pd.DataFrame(
            {
                "text": pd.Series([b.text for b, _ in decoded], dtype=object),
                "confidence": pd.Series([b.confidence for b, _ in decoded], dtype=np.float64),
                "greedy_text": pd.Series([g.text for _, g in decoded], dtype=object),
            }
        )
