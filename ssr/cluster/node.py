"""What each TrainJob node runs (``ssr trainjob node``): wait until the master's DNS record
resolves, fetch the run's config, then ``exec torchrun ... -m ssr train ... --resume auto``.

Trainer's torch plugin sets ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``; it does not start torchrun for a container trainer.
The master's address is a headless-Service record that can appear after the pods start, so a
node that asked too early would fail the rendezvous: each node first waits for it (bounded).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ssr.cluster.trainjob import SHUTDOWN_SECONDS
from ssr.errors import SSRError

log = logging.getLogger(__name__)

PET_VARS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR")
DEFAULT_MASTER_PORT = "29500"


def wait_for_dns(
    host: str,
    timeout: float,
    interval: float = 2.0,
    resolve: Callable[[str], object] = socket.gethostbyname,
) -> float:
    """Wait until ``host`` resolves; the seconds waited. Raises SSRError after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            resolve(host)
            return time.monotonic() - started
        except OSError as exc:
            waited = time.monotonic() - started
            if waited >= timeout:
                raise SSRError(
                    f"the master address {host} did not resolve within {timeout:.0f}s: {exc}"
                ) from None
            time.sleep(min(interval, max(timeout - waited, 0.0)))


def torchrun_argv(
    env: Mapping[str, str], train_args: Sequence[str], rendezvous_timeout: int
) -> list[str]:
    """``torchrun`` with the node's place from the ``PET_*`` variables (static rendezvous with a
    join timeout), running ``ssr train TRAIN_ARGS --resume auto``."""
    missing = [v for v in PET_VARS if not env.get(v)]
    if missing:
        raise SSRError(f"not in a Trainer torch node: {', '.join(missing)} unset")
    args = list(train_args)
    if "--resume" not in args:
        args += ["--resume", "auto"]
    return [
        "torchrun",
        f"--nnodes={env['PET_NNODES']}",
        f"--nproc-per-node={env['PET_NPROC_PER_NODE']}",
        f"--node-rank={env['PET_NODE_RANK']}",
        f"--master-addr={env['PET_MASTER_ADDR']}",
        f"--master-port={env.get('PET_MASTER_PORT') or DEFAULT_MASTER_PORT}",
        f"--rdzv-conf=timeout={int(rendezvous_timeout)}",
        f"--shutdown-timeout={SHUTDOWN_SECONDS}",  # SIGTERM -> trainers checkpoint, then exit
        "-m",
        "ssr",
        "train",
        *args,
    ]


def fetch_config(uri: str, dest: str | Path) -> str:
    """Copy the run's config (``s3://`` or a path) to ``dest``; returns ``dest``."""
    from ssr.storage import download_to

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    download_to(uri, str(dest))
    return str(dest)


def run_node(
    train_args: Sequence[str],
    config_uri: str = "",
    master_timeout: float = 600,
    rendezvous_timeout: int = 900,
    workdir: str | Path = "/tmp/ssr-node",
    execvp: Callable[[str, list[str]], object] = os.execvp,
) -> None:
    """Wait for the master, fetch the config, and replace this process with torchrun."""
    env = dict(os.environ)
    argv = torchrun_argv(env, [], rendezvous_timeout)  # checks the PET_* variables first
    waited = wait_for_dns(env["PET_MASTER_ADDR"], master_timeout)
    log.info("master %s resolved after %.0fs", env["PET_MASTER_ADDR"], waited)
    args = list(train_args)
    if config_uri:
        args = ["--config", fetch_config(config_uri, Path(workdir) / "config.yaml"), *args]
    argv = torchrun_argv(env, args, rendezvous_timeout)
    log.info("node %s of %s: %s", env["PET_NODE_RANK"], env["PET_NNODES"], " ".join(argv))
    execvp(argv[0], argv)
