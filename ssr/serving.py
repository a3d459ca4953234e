"""Serve a registered model over HTTP with MLflow's scoring server, after checking it.

:func:`serve` resolves an alias to its version once (``models:/ssr-emg@champion`` ->
``models:/ssr-emg/7``), checks the model is one ``ssr register`` logged as code
(:mod:`ssr.registry.safe_load`: ``MLmodel`` first, nothing pickled is opened), downloads it,
and runs MLflow's scoring server (``mlflow.pyfunc.scoring_server``, the app ``mlflow models
serve`` runs) on that local copy with uvicorn in a child process. SIGTERM and SIGINT are passed
on to it; the downloaded copy is removed when it exits.

Endpoints (MLflow's): ``POST /invocations`` (JSON ``{"dataframe_records": [{"emg": [[...],
...]}]}``, one record per recording of (time, channels) samples; the answer ``{"predictions":
[...]}`` holds one object per record: ``label``, ``confidence`` and ``p_<label>`` from a word
model, ``text``, ``confidence`` and ``greedy_text`` from a sentence model), ``GET /health`` and
``GET /ping`` (200 once the model is loaded), ``GET /version``. Input the model cannot use gets
HTTP 400 with a message naming the row (see :class:`~ssr.registry.pyfunc_model.InvalidInputError`).

``python -m ssr.serving [--model URI] [--host H] [--port P]`` is ``ssr serve`` without the rest
of the CLI: it imports only what serving needs (the serve image's entry point).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ssr.errors import SSRError
from ssr.redact import RedactingFilter, redact
from ssr.registry.safe_load import fetch_checked, resolve_alias
from ssr.serve_options import DESCRIPTION, add_arguments

log = logging.getLogger(__name__)

PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def scoring_command(
    model_dir: str | Path, host: str, port: int, workers: int = 1, timeout: int | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run MLflow's scoring server on ``model_dir``: MLflow's
    own (``scoring_server.get_cmd``), with uvicorn started by this interpreter."""
    from mlflow.pyfunc import scoring_server

    command, env = scoring_server.get_cmd(
        str(model_dir),
        port,
        host,  # type: ignore[arg-type]  # MLflow annotates it int; it is a name (shlex.quote)
        timeout,
        workers,
    )
    argv = shlex.split(command)
    if argv[0] != "uvicorn":
        raise RuntimeError(f"unexpected scoring server command from MLflow: {command}")
    env[PICKLE_ENV] = "false"  # the model was checked; refuse pickles in the server too
    return [sys.executable, "-m", "uvicorn", *argv[1:]], env


def serve(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    model_dir: str | None = None,
    timeout: int | None = None,
) -> int:
    """Check, download and serve ``model_uri`` until the server exits; its exit status."""
    resolved = resolve_alias(model_uri)
    tmp = None
    if model_dir is None:
        tmp = tempfile.mkdtemp(prefix="ssr-serve-")
        model_dir = str(Path(tmp) / "model")
    try:
        local = fetch_checked(resolved, model_dir)
        argv, env = scoring_command(local, host, port, workers, timeout)
        shown = model_uri if resolved == model_uri else f"{model_uri} ({resolved})"
        log.info(
            "serving %s from %s on http://%s:%d (POST /invocations, GET /health)",
            shown,
            local,
            host,
            port,
        )
        proc = subprocess.Popen(argv, env=env)

        def forward(signum: int, _frame: object) -> None:
            if proc.poll() is None:
                proc.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            rc = proc.wait()
            return 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def default_workers() -> int:
    """``SSR_SERVE_WORKERS`` or 1."""
    return int(os.environ.get("SSR_SERVE_WORKERS", "1"))


def serve_parsed(args: argparse.Namespace) -> int:
    """:func:`serve` with the options :func:`add_arguments` defines (``ssr serve`` and
    ``python -m ssr.serving`` both end here)."""
    return serve(
        args.model,
        host=args.host,
        port=args.port,
        workers=args.workers or default_workers(),
        model_dir=args.model_dir,
        timeout=args.timeout,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m ssr.serving``: the options and exit codes of ``ssr serve`` (2: refused)."""

    parser = argparse.ArgumentParser(prog="python -m ssr.serving", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:  # passwords in URLs never reach the log
        handler.addFilter(RedactingFilter())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return serve_parsed(args)
    except SSRError as exc:
        print(redact(f"ssr serve: error: {exc}"), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
