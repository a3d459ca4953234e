"""``ssr evaluate`` for ``task: sentences``: transcribe a split greedily and with beam search
(lexicon + the checkpoint's word n-gram LM), score WER and CER overall, on sentences of known
words and on sentences holding a word never seen in training, per recording session, beside
the linear CTC baseline decoded the same way; write ``metrics.json``, ``predictions.json``,
``posteriorgram.png`` and ``report.html``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ssr.config import Config, DecodingConfig
from ssr.data.processed import ProcessedSplit, collate
from ssr.data.sessions import metric_keys, session_groups
from ssr.errors import CheckpointError, DataError
from ssr.fsutil import write_json, write_text
from ssr.metrics_json import check_per_session, is_number
from ssr.progress import progress_bar
from ssr.sentences.baseline import NAME as BASELINE_NAME
from ssr.sentences.baseline import baseline_emissions
from ssr.sentences.decoding import BeamDecoder, greedy_decode
from ssr.sentences.lm import LanguageModel
from ssr.sentences.plots import plot_posteriorgrams
from ssr.sentences.report import render_sentence_report
from ssr.sentences.scoring import TextScores, score_texts, unseen_words
from ssr.tracking.base import NullTracker, Tracker
from ssr.training.ctc import ctc_loss, emissions
from ssr.training.selection import selection_of

log = logging.getLogger(__name__)
NUM_PLOTTED = 4


def checkpoint_language_model(state: dict[str, Any], source: str) -> LanguageModel:
    """The lexicon and LM a sentence checkpoint carries (CheckpointError if it has none)."""
    lm = state.get("language_model")
    if not isinstance(lm, dict):
        raise CheckpointError(f"{source}: a task sentences checkpoint without a language model")
    return LanguageModel.from_state(lm, source)


@torch.no_grad()
def split_emissions(
    model: torch.nn.Module, data: ProcessedSplit, device: torch.device, batch_size: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per utterance of ``data``: CTC log-probs (T', U) float32, and the loss per unit."""
    model.eval()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out: list[np.ndarray] = []
    losses = []
    for batch in progress_bar(loader, desc=f"transcribe {data.split}", leave=False):
        logits, lengths = emissions(model, batch, device)
        losses.append(ctc_loss(logits, lengths, batch.to(device), "none").cpu().numpy())
        log_probs = logits.log_softmax(dim=-1).cpu().numpy()
        for row, n in zip(log_probs, lengths.tolist(), strict=True):
            out.append(np.ascontiguousarray(row[:n]))
    return out, np.concatenate(losses)


def _rates(scores: TextScores, idx: np.ndarray) -> tuple[float, float]:
    words = int(scores.ref_words[idx].sum())
    chars = int(scores.ref_chars[idx].sum())
    wer = float(scores.word_errors[idx].sum() / max(words, 1))
    return wer, float(scores.char_errors[idx].sum() / max(chars, 1))


def _subset(lm_scores: TextScores, greedy: TextScores, idx: np.ndarray) -> dict[str, Any]:
    wer, cer = _rates(lm_scores, idx)
    return {
        "num_samples": int(idx.size),
        "wer": wer,
        "cer": cer,
        "greedy_wer": _rates(greedy, idx)[0],
    }


@dataclass
class SentenceEvalResult:
    """Scores of one sentence checkpoint on one split, and where the outputs went."""

    split: str
    metrics_json: dict[str, Any]
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def wer(self) -> float:
        return float(self.metrics_json["wer"])

    @property
    def cer(self) -> float:
        return float(self.metrics_json["cer"])

    @property
    def num_samples(self) -> int:
        return int(self.metrics_json["num_samples"])

    def metrics(self) -> dict[str, Any]:
        return self.metrics_json

    def scalars(self) -> dict[str, float]:
        """``{split}/wer``, ``/cer``, greedy, known/unseen-word, baseline and per-session
        numbers for trackers."""
        m, s = self.metrics_json, self.split
        out = {f"{s}/wer": m["wer"], f"{s}/cer": m["cer"], f"{s}/loss": m["loss"]}
        out |= {f"{s}/greedy_{k}": m["greedy"][k] for k in ("wer", "cer")}
        for part in ("known_words", "unseen_words"):
            if part in m:
                out |= {f"{s}/{part}/{k}": m[part][k] for k in ("wer", "cer", "greedy_wer")}
        if "baseline" in m:
            out |= {f"{s}/baseline_{k}": m["baseline"][k] for k in ("wer", "cer", "greedy_wer")}
        keys = metric_keys(list(m["per_session"]))
        for name, scores in m["per_session"].items():
            for k, v in scores.items():
                if k != "num_samples":
                    out[f"{s}/session/{keys[name]}/{k}"] = v
        return {k: float(v) for k, v in out.items()}


def evaluate_sentences(
    checkpoint: str,
    split: str,
    processed_dir: str,
    out_dir: str,
    model: torch.nn.Module,
    cfg: Config,
    state: dict[str, Any],
    tracker: Tracker | None = None,
    batch_size: int = 32,
    device: torch.device | None = None,
    baseline: bool = True,
    decoding: DecodingConfig | None = None,
) -> SentenceEvalResult:
    """Score the sentence ``model`` (restored from ``checkpoint``; ``cfg`` its stored config)
    on ``split`` of ``processed_dir``; see the module docstring. ``decoding`` overrides the
    stored decoding settings (the LM itself is the checkpoint's)."""
    tracker = tracker or NullTracker()
    dev = device or torch.device("cpu")
    data = ProcessedSplit(processed_dir, split)
    if data.task != "sentences":
        raise DataError(f"{processed_dir}: a {data.task} data set, the checkpoint is sentences")
    labels = data.label_names
    lm = checkpoint_language_model(state, checkpoint)
    dec_cfg = decoding or cfg.decoding
    beam = BeamDecoder(labels, lm, dec_cfg)
    model.to(dev)
    emis, losses = split_emissions(model, data, dev, batch_size)
    greedy = [greedy_decode(e, labels) for e in emis]
    hyps = [beam.decode(e) for e in progress_bar(emis, desc="beam search", leave=False)]
    refs = data.texts
    lm_scores = score_texts(refs, [h.text for h in hyps])
    greedy_scores = score_texts(refs, [h.text for h in greedy])
    train_words = {w for t in ProcessedSplit(processed_dir, "train").texts for w in t.split()}
    unseen = unseen_words(refs, train_words)
    metrics: dict[str, Any] = {
        "task": "sentences",
        "split": split,
        "num_samples": len(data),
        "loss": float(losses.mean()),
        "labels": labels,
        "wer": lm_scores.wer,
        "cer": lm_scores.cer,
        "greedy": {"wer": greedy_scores.wer, "cer": greedy_scores.cer},
        "lm": {"wer": lm_scores.wer, "cer": lm_scores.cer},
        "known_words": _subset(lm_scores, greedy_scores, np.flatnonzero(~unseen)),
        "decoding": {
            "lm_order": lm.order,
            "beam_size": dec_cfg.beam_size,
            "lm_weight": dec_cfg.lm_weight,
            "word_score": dec_cfg.word_score,
            "lexicon_size": len(lm.words),
        },
    }
    if unseen.any():
        metrics["unseen_words"] = _subset(lm_scores, greedy_scores, np.flatnonzero(unseen))
    base_scores = base_hyps = None
    if baseline:
        base_emis, _ = baseline_emissions(processed_dir, split, cfg.model.subsample)
        base_hyps = [beam.decode(e).text for e in base_emis]
        base_greedy = score_texts(refs, [greedy_decode(e, labels).text for e in base_emis])
        base_scores = score_texts(refs, base_hyps)
        metrics["baseline"] = {
            "name": BASELINE_NAME + ", the same decoders",
            "wer": base_scores.wer,
            "cer": base_scores.cer,
            "greedy_wer": base_greedy.wer,
            "greedy_cer": base_greedy.cer,
        }
    metrics["per_session"] = _per_session(data.ids, lm_scores, base_scores)
    selection = selection_of(state)
    if selection is not None:
        metrics["selection"] = selection
    predictions = [
        {
            "index": i,
            "id": data.ids[i],
            "reference": refs[i],
            "hypothesis": hyps[i].text,
            "greedy": greedy[i].text,
            "confidence": hyps[i].confidence,
            "word_errors": int(lm_scores.word_errors[i]),
            "ref_words": int(lm_scores.ref_words[i]),
            "char_errors": int(lm_scores.char_errors[i]),
            "ref_chars": int(lm_scores.ref_chars[i]),
            "unseen_words": bool(unseen[i]),
            **(
                {
                    "baseline": base_hyps[i],
                    "baseline_word_errors": int(base_scores.word_errors[i]),
                }
                if base_hyps is not None and base_scores is not None
                else {}
            ),
        }
        for i in range(len(data))
    ]
    result = SentenceEvalResult(split, metrics, str(out_dir))
    _write(result, checkpoint, predictions, emis, labels, tracker)
    return result


def _per_session(
    ids: Sequence[str], scores: TextScores, base: TextScores | None
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, idx in session_groups(ids).items():
        wer, cer = _rates(scores, idx)
        entry: dict[str, Any] = {"num_samples": int(idx.size), "wer": wer, "cer": cer}
        if base is not None:
            entry["baseline_wer"] = _rates(base, idx)[0]
        out[name] = entry
    return out


def _write(
    result: SentenceEvalResult,
    checkpoint: str,
    predictions: list[dict[str, Any]],
    emis: list[np.ndarray],
    labels: list[str],
    tracker: Tracker,
) -> None:
    out = Path(result.out_dir)
    m = result.metrics_json
    write_json(
        out / "predictions.json",
        {"split": result.split, "checkpoint": str(checkpoint), "predictions": predictions},
    )
    items = [(emis[i], p["reference"], p["hypothesis"]) for i, p in enumerate(predictions)]
    plot = plot_posteriorgrams(items[:NUM_PLOTTED], labels, out / "posteriorgram.png")
    write_json(out / "metrics.json", m)
    write_text(out / "report.html", render_sentence_report(m, predictions, plot))
    result.files = {
        "metrics": str(out / "metrics.json"),
        "predictions": str(out / "predictions.json"),
        "posteriorgram": str(plot),
        "report": str(out / "report.html"),
    }
    tracker.log_metrics(result.scalars(), step=0)
    tracker.log_image(plot, key=f"{result.split}/posteriorgram")
    rows = [
        [p["id"], p["reference"], p["hypothesis"], p["greedy"], p["word_errors"]]
        for p in predictions
    ]
    columns = ["utterance", "reference", "hypothesis", "greedy", "word_errors"]
    tracker.log_table(f"{result.split}/transcripts", columns, rows)
    for key in ("metrics", "predictions", "report"):
        tracker.log_artifact(result.files[key], artifact_path="evaluation")
    base = m.get("baseline")
    log.info(
        "%s: WER %.4f CER %.4f with the LM, greedy WER %.4f CER %.4f (%d utterances)%s",
        result.split,
        m["wer"],
        m["cer"],
        m["greedy"]["wer"],
        m["greedy"]["cer"],
        m["num_samples"],
        f"; baseline WER {base['wer']:.4f} (greedy {base['greedy_wer']:.4f})" if base else "",
    )


def read_sentence_metrics(path: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Check a sentence evaluation's ``metrics.json`` (already parsed from ``path``): numeric
    ``wer``, ``cer``, ``loss``, ``greedy``, and if present ``baseline`` and ``per_session``
    scores; DataError naming the file and field."""
    for key in ("wer", "cer", "loss", "num_samples"):
        if not is_number(metrics.get(key)):
            raise DataError(f"{path}: {key!r} must be a number, got {metrics.get(key)!r}")
    for part, keys in (("greedy", ("wer", "cer")), ("baseline", ("wer", "greedy_wer"))):
        value = metrics.get(part)
        if (part == "greedy" or value is not None) and not (
            isinstance(value, dict) and all(is_number(value.get(k)) for k in keys)
        ):
            raise DataError(f"{path}: {part!r} must be an object with numeric {', '.join(keys)}")
    check_per_session(path, metrics.get("per_session"), "wer")
    return metrics
