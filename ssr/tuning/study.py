"""The Optuna study behind ``ssr tune``: TPE sampling, median pruning on the per-epoch
session-mean validation loss, SQLite storage that a killed study resumes from, trials in one
process or in ``jobs`` worker processes, the study's parent tracking run and the best config.

Everything lives in one folder: ``study.db`` (the Optuna storage), ``best.yaml`` (the best
trial's complete config, written atomically after every run) and ``trials/NNN/`` (each trial's
checkpoints and outputs). See docs/tuning.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from ssr.config import Config, dump_config
from ssr.errors import ConfigError
from ssr.fsutil import write_text
from ssr.tracking.base import Tracker, open_tracker
from ssr.tracking.context import data_fingerprint
from ssr.training import distributed
from ssr.tuning.recovery import check_resume, recover_stopped_trials
from ssr.tuning.space import SearchSpace
from ssr.tuning.storage import LOCK, STUDY_DB, StudyLock, open_storage, open_study
from ssr.tuning.trial import METRIC, TrialContext, TuneInterruptedError, trial_config
from ssr.tuning.workers import Tickets, optimize, run_workers, trial_logging

log = logging.getLogger(__name__)

BEST_CONFIG = "best.yaml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneOptions:
    """How to run a study (``ssr tune``'s options)."""

    out_dir: str
    trials: int  # finished (complete or pruned) trials the study should have in all
    jobs: int = 1
    timeout: float | None = None  # seconds after which no new trial starts
    study_name: str | None = None  # default: the out folder's name
    trial_log_level: int = logging.WARNING  # of the trainer's own log lines during trials
    space_file: str | None = None  # logged with the study's run


@dataclass
class TuneResult:
    """Where a study stands after ``ssr tune``."""

    study_name: str
    storage: Path
    complete: int
    pruned: int
    failed: int
    ran: int  # trials this invocation ran
    seconds: float
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_config: Path | None = None
    run_ids: dict[str, str] = field(default_factory=dict)


def _seed(space: SearchSpace, cfg: Config, offset: int, worker: int = 0) -> int:
    """The sampler's seed: the space's or training.seed, moved on past the ``offset`` trials
    already in the study (a resumed study must not draw the same values again) and apart for
    each worker."""
    base = cfg.training.seed if space.sampler_seed is None else space.sampler_seed
    return int(np.random.SeedSequence([base, offset, worker]).generate_state(1)[0])


def _open_parent(
    cfg: Config, name: str, study: optuna.Study, space: SearchSpace, opts: TuneOptions
) -> Tracker:
    """The study's own run (resumed with the study): the space, the settings, later the best."""
    own = {"tracking.run_name": name, "tracking.wandb.group": name}
    parent_cfg = trial_config(cfg.model_dump(), own, "study")
    fingerprint = data_fingerprint(cfg.data.processed_dir)
    ids = study.user_attrs.get("tracking")
    tracker = open_tracker(parent_cfg, job="tune", resume_ids=ids, fingerprint=fingerprint)
    study.set_user_attr("tracking", tracker.run_ids())
    sampler = f"TPE, {space.sampler_startup_trials} random startup trials"
    pruner = "none"
    if space.pruning:
        pruner = f"median after {space.pruner_startup_trials} complete trials and "
        pruner += f"{space.warmup_epochs} epochs"
    params: dict[str, Any] = {f"space.{p.key}": p.describe() for p in space.params}
    params.update(
        {
            "study.name": name,
            "study.metric": METRIC,
            "study.sampler": sampler,
            "study.pruner": pruner,
            "study.baseline_trial": space.baseline_trial,
        }
    )
    tracker.log_params(params)
    tracker.set_tags({"tune.study": name, "tune.trials": str(opts.trials)})
    if opts.space_file:
        tracker.log_artifact(opts.space_file, "tune")
    return tracker


def write_best(study: optuna.Study, ctx: TrialContext) -> Path | None:
    """``best.yaml``: the best complete trial's whole config (loads with ``ssr train
    --config``), written under a temporary name and renamed; None before any trial completed."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    cfg = trial_config(ctx.base, dict(best.params), f"trial {best.number}")
    path = Path(ctx.out_dir) / BEST_CONFIG
    values = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
    header = (
        f"# Best trial of study {ctx.study_name!r}: trial {best.number}, {METRIC} "
        f"{best.value:.6g}\n# tuned values: {values}\n# train it: ssr train --config {path}\n"
    )
    write_text(path, header + dump_config(cfg))
    return path


def _report(parent: Tracker, study: optuna.Study, result: TuneResult) -> None:
    """Log to the study's run what is new: each complete trial's value (step = trial number),
    the trials table, the best value and values as tags, and best.yaml."""
    trials = study.get_trials(deepcopy=False)
    logged = set(study.user_attrs.get("parent_logged", []))
    for t in trials:
        if t.state == TrialState.COMPLETE and t.number not in logged:
            parent.log_metrics({f"trial/{METRIC}": float(t.value or 0.0)}, step=t.number)
            logged.add(t.number)
    study.set_user_attr("parent_logged", sorted(logged))
    keys = sorted({k for t in trials for k in t.params})
    rows = [
        [t.number, t.state.name.lower(), t.value, t.last_step, *(t.params.get(k) for k in keys)]
        for t in trials
        if t.state.is_finished()
    ]
    if rows:
        parent.log_table("trials", ["trial", "state", METRIC, "last epoch", *keys], rows)
    tags = {
        "tune.complete": str(result.complete),
        "tune.pruned": str(result.pruned),
        "tune.failed": str(result.failed),
    }
    if result.best_trial is not None and result.best_value is not None:
        parent.log_metrics({f"best/{METRIC}": result.best_value}, step=len(trials))
        tags["tune.best_trial"] = str(result.best_trial)
        tags.update({f"tune.best.{k}": json.dumps(v) for k, v in result.best_params.items()})
    parent.set_tags(tags)
    if result.best_config is not None:
        parent.log_artifact(result.best_config, "tune")


def _summary(study: optuna.Study, name: str, db: Path, ran: int, start: float) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    result = TuneResult(
        study_name=name,
        storage=db,
        complete=count[TrialState.COMPLETE],
        pruned=count[TrialState.PRUNED],
        failed=count[TrialState.FAIL],
        ran=ran,
        seconds=time.monotonic() - start,
    )
    with contextlib.suppress(ValueError):
        best = study.best_trial
        result.best_trial, result.best_value = best.number, best.value
        result.best_params = dict(best.params)
    return result


def run_study(cfg: Config, space: SearchSpace, opts: TuneOptions) -> TuneResult:
    """Run (or resume) the study until it has ``opts.trials`` finished trials."""
    if distributed.env_info().enabled:
        raise ConfigError("ssr tune runs each trial in one process; use --jobs, not torchrun")
    if "://" in opts.out_dir:
        raise ConfigError(f"{opts.out_dir}: the study folder must be local (SQLite storage)")
    if opts.trials < 1 or opts.jobs < 1:
        raise ConfigError("--trials and --jobs must be at least 1")
    space.check_against(cfg, opts.space_file or "<space>")
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = opts.study_name or out.resolve().name
    lock = StudyLock(out / LOCK)
    lock.exclusive()
    try:
        storage = open_storage(out)
        study = open_study(storage, name, space, _seed(space, cfg, 0))
        offset = len(study.get_trials(deepcopy=False))
        study = open_study(storage, name, space, _seed(space, cfg, offset))
        fingerprint = data_fingerprint(cfg.data.processed_dir)
        ctx = TrialContext(str(out), name, space, cfg.model_dump(), opts.trials)
        ctx = replace(ctx, fingerprint=fingerprint)
        check_resume(study, cfg, space, fingerprint, out / STUDY_DB)
        recover_stopped_trials(study, storage, ctx)
        if space.baseline_trial and not study.get_trials(deepcopy=False):
            values, why = space.baseline(cfg)
            if values is None:
                log.warning("no baseline trial: %s", why)
            else:
                study.enqueue_trial(values, user_attrs={"baseline": True})
        return _run(cfg, space, opts, study, ctx, lock)
    finally:
        lock.close()


def _run(
    cfg: Config,
    space: SearchSpace,
    opts: TuneOptions,
    study: optuna.Study,
    ctx: TrialContext,
    lock: StudyLock,
) -> TuneResult:
    start = time.monotonic()
    parent = _open_parent(cfg, ctx.study_name, study, space, opts)
    ctx = replace(ctx, parent_ids=parent.run_ids())
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    todo = max(0, opts.trials - done)
    if not todo:
        log.info("study %s already has %d finished trials", ctx.study_name, done)
    deadline = time.time() + opts.timeout if opts.timeout else None
    jobs = min(opts.jobs, todo)
    tickets = Tickets(todo, shared=jobs > 1)
    status = "FAILED"
    try:
        lock.share()
        if jobs > 1:
            offset = len(study.get_trials(deepcopy=False))
            seeds = [_seed(space, cfg, offset, w) for w in range(1, jobs + 1)]
            run_workers(ctx, tickets, opts.trial_log_level, seeds, deadline)
        elif jobs == 1:
            with trial_logging(opts.trial_log_level):
                optimize(study, ctx, tickets, deadline)
        status = "FINISHED"
    except (KeyboardInterrupt, TuneInterruptedError):
        status = "KILLED"
        raise
    finally:
        result = _summary(
            study, ctx.study_name, Path(ctx.out_dir) / STUDY_DB, todo - tickets.left, start
        )
        result.best_config = write_best(study, ctx)
        result.run_ids = parent.run_ids()
        _report(parent, study, result)
        parent.finish(status)
    return result
