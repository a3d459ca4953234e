"""The options of ``ssr serve`` and ``python -m ssr.serving``, in a module light enough for
the CLI to import at start-up (:mod:`ssr.serving` loads MLflow)."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = (
    "Check that MODEL is a model `ssr register` logged (its MLmodel is read first; a pickled "
    "model is refused unopened), download it and serve it with MLflow's scoring server: POST "
    '/invocations with {"dataframe_records": [{"emg": [[...], ...]}]} (a word model answers '
    "label, confidence and p_<label>; a sentence model text, confidence and greedy_text), GET "
    "/health. Loading a model runs its code: serve only from registries you trust. "
    "MLFLOW_TRACKING_URI names the registry."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ssr serve`` and ``python -m ssr.serving``."""
    parser.add_argument(
        "--model",
        default=os.environ.get("SSR_MODEL_URI", "models:/ssr-emg@champion"),
        help="MLflow model URI (default: $SSR_MODEL_URI or models:/ssr-emg@champion)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (8080)")
    parser.add_argument(
        "--workers", type=int, default=None, help="server processes ($SSR_SERVE_WORKERS or 1)"
    )
    parser.add_argument(
        "--model-dir",
        default=None,
        help="download the model into this new folder and keep it (default: a temporary "
        "folder, removed on exit)",
    )
    parser.add_argument(
        "--timeout", type=int, default=None, help="seconds per request (MLflow's default: 60)"
    )
