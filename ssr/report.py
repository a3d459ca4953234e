"""A self-contained HTML report of one evaluation: model against the baseline, per class and
per recording session, with a warning when the best epoch came suspiciously early.

Written by ``ssr evaluate`` beside ``metrics.json``; the pipeline's evaluate step hands it to
the KFP UI as an HTML artifact, which renders it in the run's visualisations. The confusion
matrix is embedded as a PNG data URI, so the file has no external references.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ssr.metrics import MACRO_F1_CONVENTION


def row(cells: list[str], tag: str = "td", cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def session_table(per_session: dict[str, dict[str, Any]]) -> str:
    """The per-session table; rows where the model loses to the baseline are marked."""
    if not per_session:
        return ""
    rows = [row(["session", "utterances", "model", "baseline", "gain", ""], "th")]
    losses = 0
    for name, s in per_session.items():
        base = s.get("baseline_accuracy")
        gain = None if base is None else s["accuracy"] - base
        loses = gain is not None and gain < 0
        losses += int(loses)
        cells = [
            html.escape(name),
            str(s["num_samples"]),
            f"{s['accuracy']:.4f}",
            "-" if base is None else f"{base:.4f}",
            "-" if gain is None else f"{100 * gain:+.1f}",
            "model loses" if loses else "",
        ]
        rows.append(row(cells, cls="loses" if loses else ""))
    note = (
        f"<p>The model loses to the baseline on {losses} of {len(per_session)} sessions "
        "(marked).</p>"
        if losses
        else ""
    )
    return (
        "<h2>Per session</h2><p>Accuracy per recording session (the folder of each "
        f"utterance's file); gain in points.</p><table>{''.join(rows)}</table>{note}"
    )


def selection_warning(selection: dict[str, Any] | None) -> str:
    """A warning paragraph when the best epoch came in the first tenth of training."""
    if not selection or not selection.get("early_best"):
        return ""
    return (
        '<p class="warning"><b>Warning:</b> the best epoch '
        f"({selection['best_epoch']} of {selection['num_epochs']}) came in the first tenth of "
        "training, a sign the model learns the training sessions rather than the task.</p>"
    )


def render_report(metrics: dict[str, Any], confusion_png: str | Path | None = None) -> str:
    """HTML for ``metrics`` (the ``metrics.json`` object of ``ssr evaluate``)."""
    split = html.escape(str(metrics["split"]))
    rows = [row(["", "accuracy", "macro-F1"], "th")]
    rows.append(row(["model", f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}"]))
    baseline = metrics.get("baseline")
    verdict = ""
    if baseline:
        rows.append(
            row(
                [
                    f"baseline: {html.escape(baseline['name'])}",
                    f"{baseline['accuracy']:.4f}",
                    f"{baseline['macro_f1']:.4f}",
                ]
            )
        )
        gain = metrics["accuracy"] - baseline["accuracy"]
        word = "beats" if gain > 0 else "does not beat"
        verdict = f"<p><b>The model {word} the baseline</b> by {100 * gain:+.1f} points.</p>"
    per_class = [row(["class", "precision", "recall", "F1", "support"], "th")]
    for name, m in metrics["per_class"].items():
        per_class.append(
            row(
                [
                    html.escape(name),
                    f"{m['precision']:.3f}",
                    f"{m['recall']:.3f}",
                    f"{m['f1']:.3f}",
                    str(m["support"]),
                ]
            )
        )
    image = ""
    if confusion_png is not None and Path(confusion_png).is_file():
        data = base64.b64encode(Path(confusion_png).read_bytes()).decode("ascii")
        image = (
            "<h2>Confusion matrix</h2>"
            f'<img alt="confusion matrix" src="data:image/png;base64,{data}">'
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>ssr evaluation ({split})</title>"
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}tr.loses{background:#fdd}"
        ".warning{background:#fec;border:1px solid #c90;padding:4px 8px}</style></head><body>"
        f"<h1>Evaluation on the {split} split ({metrics['num_samples']} utterances)</h1>"
        f"{selection_warning(metrics.get('selection'))}"
        f"<table>{''.join(rows)}</table>{verdict}"
        f"<p>Loss (plain cross-entropy): {metrics['loss']:.4f}. Macro-F1: "
        f"{MACRO_F1_CONVENTION}.</p>{session_table(metrics.get('per_session') or {})}"
        f"<h2>Per class</h2><table>{''.join(per_class)}</table>{image}</body></html>\n"
    )
