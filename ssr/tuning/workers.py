"""Running trials: in the ``ssr tune`` process, or in ``--jobs`` worker processes that share
the study's storage and a count of the trials left to start."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ssr.errors import SSRError
from ssr.redact import RedactingFilter
from ssr.training.signals import sigterm_when_parent_dies
from ssr.tuning.storage import LOCK, StudyLock, open_storage, open_study
from ssr.tuning.trial import (
    Objective,
    TrialContext,
    TuneError,
    TuneInterruptedError,
    progress_line,
)

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as the ssr command's


@contextlib.contextmanager
def trial_logging(level: int) -> Iterator[None]:
    """The trainer's own lines at ``level`` (default: warnings only), the study's progress
    lines at INFO: one line per trial, not one per epoch of every trial."""
    ssr_log, own = logging.getLogger("ssr"), logging.getLogger("ssr.tuning")
    saved = ssr_log.level, own.level
    ssr_log.setLevel(level)
    own.setLevel(min(level, logging.INFO))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are in the progress lines
    try:
        yield
    finally:
        ssr_log.setLevel(saved[0])
        own.setLevel(saved[1])


class Tickets:
    """The number of trials left to start: a plain count in one process, shared memory (and a
    lock) between worker processes, so that they start exactly that many in all."""

    def __init__(self, count: int, shared: bool = False) -> None:
        self.shared = multiprocessing.get_context("spawn").Value("i", count) if shared else None
        self.count = count

    def lock(self) -> contextlib.AbstractContextManager[Any]:
        """Held by one worker at a time (a recursive lock between the processes)."""
        return contextlib.nullcontext() if self.shared is None else self.shared.get_lock()

    def take(self) -> bool:
        """Take one, if any is left."""
        if self.shared is None:
            self.count -= 1
            return self.count >= 0
        with self.shared.get_lock():
            self.shared.value -= 1
            return bool(self.shared.value >= 0)

    @property
    def left(self) -> int:
        return max(0, self.count if self.shared is None else int(self.shared.value))


def run_trial(study: optuna.Study, trial: optuna.Trial, objective: Objective) -> FrozenTrial:
    """Run one asked trial and tell the study how it ended (as ``Study.optimize`` would)."""
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    if math.isnan(value):  # the objective's way of saying the values cannot train
        return study.tell(trial, state=TrialState.FAIL)
    return study.tell(trial, value)


def optimize(
    study: optuna.Study, ctx: TrialContext, tickets: Tickets, deadline: float | None
) -> None:
    """Run trials while tickets (shared by the workers) last and the deadline has not passed.

    A trial is taken under the tickets' lock: Optuna's SQLite storage can hand the same
    enqueued trial (the baseline, a retried one) to two workers that ask at the same moment.
    """
    objective = Objective(ctx)
    while deadline is None or time.time() < deadline:
        with tickets.lock():
            if not tickets.take():
                break
            trial = study.ask()
        frozen = run_trial(study, trial, objective)
        log.info("%s", progress_line(study, frozen, ctx.target))


def _worker(
    ctx: TrialContext, tickets: Tickets, deadline: float | None, seed: int, threads: int, level: int
) -> None:
    """A worker process (``--jobs`` > 1): its own torch threads, trials from the shared study;
    it stops (SIGTERM, the trial ends at its next step) when the ``ssr tune`` process dies."""
    sigterm_when_parent_dies()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    torch.set_num_threads(threads)
    lock = StudyLock(Path(ctx.out_dir) / LOCK)
    lock.share()
    code = 0
    try:
        study = open_study(open_storage(ctx.out_dir), ctx.study_name, ctx.space, seed)
        with trial_logging(level):
            optimize(study, ctx, tickets, deadline)
    except TuneInterruptedError:
        code = 143
    except SSRError as exc:
        log.error("%s", exc)
        code = 2
    except KeyboardInterrupt:
        code = 130
    finally:
        lock.close()
    if code:
        raise SystemExit(code)


def run_workers(
    ctx: TrialContext, tickets: Tickets, level: int, seeds: list[int], deadline: float | None
) -> None:
    """One worker process per seed; each takes trials while ``tickets`` last."""
    spawn = multiprocessing.get_context("spawn")  # no forked torch or SQLite state
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // len(seeds))
    log.info(
        "%d trials in %d worker processes, %d torch thread(s) each",
        tickets.left,
        len(seeds),
        threads,
    )
    args = (tickets, deadline)
    procs = [
        spawn.Process(
            target=_worker,
            args=(ctx, *args, seed, threads, level),
            name=f"ssr-tune-{i}",
        )
        for i, seed in enumerate(seeds)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    codes = [p.exitcode for p in procs]
    if any(codes):
        if 143 in codes or 130 in codes:
            raise TuneInterruptedError("the study was stopped; rerun the same command to resume")
        raise TuneError(f"a worker process failed (exit codes {codes}); see its error above")
