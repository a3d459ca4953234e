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
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Protocol

log = logging.getLogger(__name__)


class Stoppable(Protocol):
    def request_stop(self, now: bool = False) -> None: ...


def worker_ignores_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM is the main process's to handle (see module)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def stop_on_sigterm(trainer: Stoppable) -> Iterator[None]:
    """While active, SIGTERM asks ``trainer`` to stop after the current step and checkpoint.

    A second SIGTERM gets the previous handler (by default: terminate at once). Outside the
    main thread, signals cannot be handled and this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: object) -> None:
        log.warning("SIGTERM: stopping after the current step and saving a checkpoint")
        trainer.request_stop(now=True)
        signal.signal(signal.SIGTERM, previous)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
