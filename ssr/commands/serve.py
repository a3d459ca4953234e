"""``ssr serve``: serve a registered model over HTTP with MLflow's scoring server.

The same options make ``python -m ssr.serving`` (:func:`ssr.serving.main`), the serve image's
entry point, which imports only what serving needs.
"""

from __future__ import annotations

import argparse

from ssr.serve_options import DESCRIPTION, add_arguments
from ssr.serving import serve_parsed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a registered model over HTTP (MLflow's scoring server)",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return serve_parsed(args)
