"""The trainer's ``task: sentences`` parts: the CTC loss of a batch and the validation pass
(per-utterance loss, greedy transcripts, CER/WER overall and per recording session).

The loss is PyTorch's CTC loss with the blank at unit 0, each utterance's loss divided by its
transcript length and averaged over the batch (``reduction="mean"``); an utterance the frames
cannot carry contributes zero (``zero_infinity``; preprocessing refuses such transcripts, but
time-stretch augmentation may shorten an utterance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ssr.config import Config
from ssr.data.processed import Batch
from ssr.data.sessions import metric_keys, session_groups
from ssr.errors import ConfigError
from ssr.progress import progress_bar
from ssr.sentences.decoding import greedy_decode
from ssr.sentences.scoring import TextScores, score_texts
from ssr.training.validation import SessionScore


def output_lengths(model: torch.nn.Module, lengths: torch.Tensor) -> torch.Tensor:
    """The CTC output frames of ``model`` for input ``lengths`` (B,)."""
    fn = getattr(model, "output_lengths", None)
    if not callable(fn):
        raise ConfigError(f"{type(model).__name__} is not a CTC model (no output_lengths)")
    out: torch.Tensor = fn(lengths)
    return out


def check_task_model(model: torch.nn.Module, cfg: Config) -> None:
    """A :class:`ConfigError` when ``model.arch`` does not fit ``task`` (sentences need a CTC
    architecture such as ``ctc_transformer``; words a classifier)."""
    ctc = callable(getattr(model, "output_lengths", None))
    if ctc != (cfg.task == "sentences"):
        need = "a CTC architecture (model.arch: ctc_transformer)" if not ctc else "a classifier"
        raise ConfigError(
            f"task={cfg.task} needs {need}; model.arch={cfg.model.arch} is "
            f"{'a CTC model' if ctc else 'a classifier'}"
        )


def ctc_loss(
    logits: torch.Tensor, output_lengths: torch.Tensor, batch: Batch, reduction: str = "mean"
) -> torch.Tensor:
    """CTC loss of ``logits`` (B, T', U) against ``batch.targets``; ``reduction="none"`` gives
    each utterance's loss per transcript unit."""
    if batch.targets is None or batch.target_lengths is None:
        raise ValueError("a sentence batch needs targets (is the data set task: sentences?)")
    log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # (T', B, U)
    if reduction == "mean":
        return F.ctc_loss(
            log_probs,
            batch.targets,
            output_lengths,
            batch.target_lengths,
            blank=0,
            reduction="mean",
            zero_infinity=True,
        )
    loss = F.ctc_loss(
        log_probs,
        batch.targets,
        output_lengths,
        batch.target_lengths,
        blank=0,
        reduction="none",
        zero_infinity=True,
    )
    return loss / batch.target_lengths.clamp_min(1).to(loss.dtype)


@torch.no_grad()
def emissions(
    model: torch.nn.Module,
    batch: Batch,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, T', U) of a batch on ``device`` and each utterance's output length."""
    batch = batch.to(device, non_blocking=True)
    if autocast_dtype is None:
        logits = model(batch.x, batch.padding_mask())
    else:
        with torch.autocast(device_type=device.type, dtype=autocast_dtype):
            logits = model(batch.x, batch.padding_mask())
    return logits.float(), output_lengths(model, batch.lengths)


@torch.no_grad()
def predict_transcripts(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    labels: list[str],
    autocast_dtype: torch.dtype | None = None,
    desc: str | None = None,
) -> dict[str, np.ndarray]:
    """Per utterance of ``loader``: the CTC loss per unit and the greedy transcript."""
    model.eval()
    losses: list[np.ndarray] = []
    hyps: list[str] = []
    for batch in progress_bar(loader, desc=desc, leave=False, disable=desc is None):
        logits, out_lengths = emissions(model, batch, device, autocast_dtype)
        on_device = batch.to(device)
        losses.append(ctc_loss(logits, out_lengths, on_device, reduction="none").cpu().numpy())
        log_probs = logits.log_softmax(dim=-1).cpu().numpy()
        for row, n in zip(log_probs, out_lengths.tolist(), strict=True):
            hyps.append(greedy_decode(row[:n], labels).text)
    return {"loss": np.concatenate(losses), "hypothesis": np.array(hyps, dtype=object)}


def session_results(
    ids: Sequence[str], loss: np.ndarray, scores: TextScores
) -> tuple[list[SessionScore], dict[str, float]]:
    """Per-session scores (``accuracy`` is 1 - the session's CER) and the tracker's scalars:
    ``session_mean_loss`` (the selection metric), ``worst_session_cer`` and each session's
    ``session/<name>/cer``, ``/wer`` and ``/loss``."""
    groups = session_groups(ids)
    keys = metric_keys(list(groups))
    sessions, out = [], {}
    for name, idx in groups.items():
        cer = float(scores.char_errors[idx].sum() / max(int(scores.ref_chars[idx].sum()), 1))
        wer = float(scores.word_errors[idx].sum() / max(int(scores.ref_words[idx].sum()), 1))
        s = SessionScore(name=name, count=len(idx), loss=float(loss[idx].mean()), accuracy=1 - cer)
        sessions.append(s)
        out[f"session/{keys[name]}/cer"] = cer
        out[f"session/{keys[name]}/wer"] = wer
        out[f"session/{keys[name]}/loss"] = s.loss
    out["session_mean_loss"] = float(np.mean([s.loss for s in sessions]))
    out["worst_session_cer"] = 1 - min(s.accuracy for s in sessions)
    return sessions, out


def summarise(ids: Sequence[str], refs: Sequence[str], merged: dict[str, Any]) -> dict[str, Any]:
    """The validation result of per-utterance ``merged`` (dataset order): loss, greedy CER and
    WER, the session scalars, and the transcripts."""
    hyps = [str(h) for h in merged["hypothesis"]]
    scores = score_texts(list(refs), hyps)
    sessions, scalars = session_results(ids, merged["loss"], scores)
    return {
        "loss": float(merged["loss"].mean()),
        "cer": scores.cer,
        "wer": scores.wer,
        **scalars,
        "sessions": sessions,
        "references": list(refs),
        "hypotheses": hyps,
        "char_errors": scores.char_errors,
    }
