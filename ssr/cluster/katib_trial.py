"""What each Katib trial runs (``ssr katib trial``): ``ssr train``'s code path, with a
per-epoch callback that prints the lines Katib's StdOut metrics collector parses.

The lines come from the trainer's epoch callback rather than from parsing the epoch log line:
that line is for people and may change; :func:`metric_line` writes the format of the
Experiment's ``metricsFormat`` (:data:`~ssr.cluster.katib.METRICS_FORMAT`), only in a trial.
"""

from __future__ import annotations

import logging
import math
import signal
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ssr.cluster.katib import ADDITIONAL_METRICS, METRIC_MARK, OBJECTIVE
from ssr.cluster.node import fetch_config
from ssr.config import load_config

if TYPE_CHECKING:
    from ssr.training.trainer import EpochCallback

log = logging.getLogger(__name__)

REPORTED = (OBJECTIVE, *ADDITIONAL_METRICS)


def metric_line(name: str, value: float, now: datetime | None = None) -> str | None:
    """The line that reports ``name=value`` to Katib, or None for a value that is not finite
    (the format has no NaN; a trial that never reports a number is ``MetricsUnavailable``)."""
    if not math.isfinite(value):
        return None
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp} {METRIC_MARK} {name}={value:.8g}"


def _print(line: str) -> None:
    print(line, flush=True)  # Katib's collector reads the output as it is written


def epoch_reporter(sink: Callable[[str], None] = _print) -> EpochCallback:
    """A trainer callback that prints one metric line per reported metric and epoch; it never
    stops the training (Katib's median stopping does, with SIGTERM)."""

    def report(epoch: int, row: dict[str, float]) -> bool:
        for name in REPORTED:
            line = metric_line(name, float(row[name])) if name in row else None
            if line:
                sink(line)
        return False

    return report


def run_trial(
    train_args: Sequence[str], config_uri: str = "", sink: Callable[[str], None] = _print
) -> int:
    """Fetch the search's config, train with the trial's overrides; the exit status: 0, or
    143 when stopped by SIGTERM (Katib's early stopping: a trial that exited 0 would count as
    completed, not early-stopped)."""
    from ssr.training.job import run_training

    with tempfile.TemporaryDirectory() as tmp:
        config = fetch_config(config_uri, Path(tmp) / "config.yaml") if config_uri else None
        cfg = load_config(config, list(train_args))
    result = run_training(cfg, on_epoch=epoch_reporter(sink))
    log.info(
        "trial done after %d epochs: best %s %.4f at epoch %d",
        result.epochs_run,
        OBJECTIVE,
        result.best_val_loss,
        result.best_epoch,
    )
    return 128 + signal.SIGTERM if result.preempted else 0
