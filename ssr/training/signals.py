"""SIGTERM during training: checkpoint and exit instead of dying with a traceback.

On Kubernetes a pod is stopped (preemption, eviction, a cancelled run) with SIGTERM, then
SIGKILL after ``terminationGracePeriodSeconds``. Depending on how the step is started the
signal reaches the training process directly (``ssr train`` as the container's command), or
through a shell and KFP's launcher, or (Argo's emissary forwards to the process group) every
process of the step at once, DataLoader workers included. A worker that dies of SIGTERM makes
the main process raise "DataLoader worker exited unexpectedly" before it can save anything, so
workers ignore SIGTERM (:func:`worker_ignores_sigterm`): only the main process acts on it, stops
after the current step, checkpoints and shuts its workers down itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Protocol

log = logging.getLogger(__name__)


PR_SET_PDEATHSIG = 1  # prctl(2)


class Stoppable(Protocol):
    def request_stop(self, now: bool = False) -> None: ...


def worker_ignores_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM is the main process's to handle (see module)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def sigterm_when_parent_dies() -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies; True where that works.

    A KFP lightweight component runs ``sh -ec '... python3 -m kfp.dsl.executor_main ...'``, and
    dash does not ``exec`` its last command: a SIGTERM sent to the shell alone kills the shell and
    leaves the training running, unsignalled, until the container is torn down. With this, the
    shell's death is itself the stop request. Only the pipeline step asks for it (``ssr train``
    run by hand keeps running under ``nohup`` when its terminal closes).
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


@contextlib.contextmanager
def stop_on_sigterm(trainer: Stoppable) -> Iterator[None]:
    """While active, SIGTERM asks ``trainer`` to stop after the current step and checkpoint.

    Later SIGTERMs are ignored: one stop can legitimately bring two (a process-group SIGTERM,
    then the parent-death SIGTERM of :func:`sigterm_when_parent_dies` when the wrapping shell
    dies of the first one), and a second must not kill the process in the middle of its save.
    Kubernetes ends a stop that overruns its grace period with SIGKILL; by hand, SIGINT or
    SIGKILL. Outside the main thread, signals cannot be handled and this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    received = 0

    def handler(signum: int, frame: object) -> None:
        nonlocal received
        received += 1
        if received == 1:
            log.warning("SIGTERM: stopping after the current step and saving a checkpoint")
            trainer.request_stop(now=True)
        elif received == 2:
            log.info("SIGTERM again: already stopping (SIGKILL ends the process at once)")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
