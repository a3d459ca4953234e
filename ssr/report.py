"""A self-contained HTML report of one evaluation: model against the baseline, per class.

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


def _row(cells: list[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def render_report(metrics: dict[str, Any], confusion_png: str | Path | None = None) -> str:
    """HTML for ``metrics`` (the ``metrics.json`` object of ``ssr evaluate``)."""
    split = html.escape(str(metrics["split"]))
    rows = [_row(["", "accuracy", "macro-F1"], "th")]
    rows.append(_row(["model", f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}"]))
    baseline = metrics.get("baseline")
    verdict = ""
    if baseline:
        rows.append(
            _row(
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
    per_class = [_row(["class", "precision", "recall", "F1", "support"], "th")]
    for name, m in metrics["per_class"].items():
        per_class.append(
            _row(
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
        "td:first-child{text-align:left}img{max-width:100%}</style></head><body>"
        f"<h1>Evaluation on the {split} split ({metrics['num_samples']} utterances)</h1>"
        f"<table>{''.join(rows)}</table>{verdict}"
        f"<p>Loss (plain cross-entropy): {metrics['loss']:.4f}. Macro-F1: "
        f"{MACRO_F1_CONVENTION}.</p>"
        f"<h2>Per class</h2><table>{''.join(per_class)}</table>{image}</body></html>\n"
    )
