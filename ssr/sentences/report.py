"""The HTML report of a sentence evaluation: WER and CER of the model (with the language model
and greedy) beside the baseline, on sentences of known words and on sentences holding an unseen
word, per recording session, the worst sentences, and the CTC posteriorgrams (embedded PNG)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ssr.report import row, selection_warning

WORST_SHOWN = 10


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _score_rows(m: dict[str, Any]) -> list[str]:
    rows = [row(["", "WER %", "CER %", "greedy WER %", "greedy CER %"], "th")]
    rows.append(
        row(
            [
                "model (beam search, lexicon + LM)",
                _pct(m["wer"]),
                _pct(m["cer"]),
                _pct(m["greedy"]["wer"]),
                _pct(m["greedy"]["cer"]),
            ]
        )
    )
    base = m.get("baseline")
    if base:
        rows.append(
            row(
                [
                    f"baseline: {html.escape(base['name'])}",
                    _pct(base["wer"]),
                    _pct(base["cer"]),
                    _pct(base["greedy_wer"]),
                    _pct(base["greedy_cer"]),
                ]
            )
        )
    for part, title in (
        ("known_words", "known words only"),
        ("unseen_words", "with an unseen word"),
    ):
        if part in m:
            s = m[part]
            rows.append(
                row(
                    [
                        f"model, sentences {title} ({s['num_samples']})",
                        _pct(s["wer"]),
                        _pct(s["cer"]),
                        _pct(s["greedy_wer"]),
                        "",
                    ]
                )
            )
    return rows


def _sessions(per_session: dict[str, dict[str, Any]]) -> str:
    if not per_session:
        return ""
    rows = [row(["session", "utterances", "WER %", "CER %", "baseline WER %", ""], "th")]
    for name, s in per_session.items():
        base = s.get("baseline_wer")
        loses = base is not None and s["wer"] > base
        rows.append(
            row(
                [
                    html.escape(name),
                    str(s["num_samples"]),
                    _pct(s["wer"]),
                    _pct(s["cer"]),
                    "-" if base is None else _pct(base),
                    "model loses" if loses else "",
                ],
                cls="loses" if loses else "",
            )
        )
    return f"<h2>Per session</h2><table>{''.join(rows)}</table>"


def _worst(predictions: list[dict[str, Any]]) -> str:
    ranked = sorted(
        predictions,
        key=lambda p: (-p["word_errors"] / max(p["ref_words"], 1), -p["word_errors"], p["index"]),
    )
    rows = [row(["utterance", "reference", "hypothesis (LM)", "greedy", "word errors"], "th")]
    for p in ranked[:WORST_SHOWN]:
        rows.append(
            row(
                [
                    html.escape(p["id"]),
                    html.escape(p["reference"]),
                    html.escape(p["hypothesis"]),
                    html.escape(p["greedy"]),
                    f"{p['word_errors']}/{p['ref_words']}",
                ]
            )
        )
    return f"<h2>Worst sentences</h2><table class='text'>{''.join(rows)}</table>"


def render_sentence_report(
    metrics: dict[str, Any],
    predictions: list[dict[str, Any]],
    posteriorgram_png: str | Path | None = None,
) -> str:
    """HTML for a sentence evaluation's ``metrics`` and per-utterance ``predictions``."""
    split = html.escape(str(metrics["split"]))
    verdict = ""
    base = metrics.get("baseline")
    if base:
        ratio = metrics["wer"] / base["wer"] if base["wer"] > 0 else float("inf")
        word = "beats" if metrics["wer"] < base["wer"] else "does not beat"
        verdict = (
            f"<p><b>The model {word} the baseline</b>: WER {_pct(metrics['wer'])} % against "
            f"{_pct(base['wer'])} % ({ratio:.2f} of the baseline's).</p>"
        )
    image = ""
    if posteriorgram_png is not None and Path(posteriorgram_png).is_file():
        data = base64.b64encode(Path(posteriorgram_png).read_bytes()).decode("ascii")
        image = (
            "<h2>CTC posteriorgrams</h2>"
            f'<img alt="posteriorgrams" src="data:image/png;base64,{data}">'
        )
    d = metrics.get("decoding", {})
    decoding = (
        f"<p>Beam search: {d.get('lm_order')}-gram word LM, lexicon of {d.get('lexicon_size')} "
        f"words, beam {d.get('beam_size')}, LM weight {d.get('lm_weight')}, word score "
        f"{d.get('word_score')}. CTC loss per unit: {metrics['loss']:.4f}.</p>"
        if d
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>ssr sentence evaluation ({split})</title>"
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "td:first-child{text-align:left}table.text td{text-align:left}img{max-width:100%}"
        "tr.loses{background:#fdd}"
        ".warning{background:#fec;border:1px solid #c90;padding:4px 8px}</style></head><body>"
        f"<h1>Sentence evaluation on the {split} split ({metrics['num_samples']} "
        f"utterances)</h1>{selection_warning(metrics.get('selection'))}"
        f"<table>{''.join(_score_rows(metrics))}</table>{verdict}{decoding}"
        f"{_sessions(metrics.get('per_session') or {})}{_worst(predictions)}{image}"
        "</body></html>\n"
    )
