"""SIGTERM handling in the training process (``ssr.training.signals``)."""

from __future__ import annotations

import os
import signal

from ssr.training.signals import stop_on_sigterm


class _Trainer:
    def __init__(self) -> None:
        self.requests: list[bool] = []

    def request_stop(self, now: bool = False) -> None:
        self.requests.append(now)


def test_repeated_sigterm_asks_once_and_does_not_kill() -> None:
    """A process-group SIGTERM and the parent-death SIGTERM that follows it when the step's
    shell dies arrive as two signals: the second must not end the process during its save."""
    before = signal.getsignal(signal.SIGTERM)
    trainer = _Trainer()
    with stop_on_sigterm(trainer):
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next bytecode runs
        assert trainer.requests == [True]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
