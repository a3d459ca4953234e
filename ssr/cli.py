"""The ``ssr`` console command.

Each module in :mod:`ssr.commands` contributes subcommands through a ``register(subparsers)``
function, so areas stay in their own files. Errors a user can act on (:class:`SSRError`)
print one clear line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

import ssr
import ssr.commands
from ssr.config import Config, load_config
from ssr.errors import SSRError
from ssr.progress import interactive
from ssr.redact import RedactingFilter, redact

log = logging.getLogger("ssr")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and positional ``section.key=value`` overrides to a subcommand."""
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: embedded)")
    parser.add_argument(
        "overrides", nargs="*", metavar="section.key=value", help="config overrides"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The validated config named by ``--config`` with the command line overrides applied."""
    return load_config(args.config, list(args.overrides or []))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssr", description="Silent speech recognition from surface EMG."
    )
    parser.add_argument("--version", action="version", version=f"ssr {ssr.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(ssr.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"ssr.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:  # passwords in URLs never reach the log
        handler.addFilter(RedactingFilter())
    if not interactive():  # no bar redrawn line by line into a log file (MLflow's included)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        result = args.func(args)
    except SSRError as exc:
        print(redact(f"ssr {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssr {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
