"""One trial of ``ssr tune``: the sampled values as config overrides, an ``ssr train`` run
(:func:`~ssr.training.job.run_training`, the same code path) in the trial's own folder, its
tracking run nested under the study's, and the session-mean validation loss per epoch reported
to the study so the pruner can stop it."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ssr.config import Config, config_from_dict
from ssr.errors import ConfigError, SSRError
from ssr.tracking.base import open_tracker
from ssr.training.job import run_training
from ssr.training.runtime import TrainingError
from ssr.tuning.space import Scalar, SearchSpace
from ssr.yaml_io import set_dotted

log = logging.getLogger(__name__)

METRIC = "val_session_mean_loss"  # the history row's key: what `ssr train` selects on
PARENT_TAG = "mlflow.parentRunId"  # MLflow's UI nests a run under the run this tag names
TRIALS_DIR = "trials"


class TuneError(SSRError):
    """The study cannot go on, or ended without a complete trial."""


class TuneInterruptedError(TuneError):
    """The study was stopped (SIGTERM, or its parent process died) in the middle of a trial."""


@dataclass(frozen=True)
class TrialContext:
    """What a trial needs from its study; plain data, so worker processes receive it whole."""

    out_dir: str
    study_name: str
    space: SearchSpace
    base: dict[str, Any]  # the config the study starts from (``Config.model_dump()``)
    target: int  # finished trials the study aims at (progress lines: "4/8")
    parent_ids: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None


def trial_config(base: dict[str, Any], params: Mapping[str, Any], source: str) -> Config:
    """The complete config of a trial: the study's config with the trial's values (what
    ``best.yaml`` holds; its folders and runs are the study's config's, not the trial's)."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(raw, key, value)
    return config_from_dict(raw, source)


def trial_dir(ctx: TrialContext, number: int) -> Path:
    return Path(ctx.out_dir) / TRIALS_DIR / f"{number:03d}"


def run_config(ctx: TrialContext, number: int, params: dict[str, Scalar]) -> Config:
    """:func:`trial_config` plus the trial's own folders, run name and W&B group (the study)."""
    work = trial_dir(ctx, number)
    own = {
        "training.checkpoint_dir": str(work / "checkpoints"),
        "training.output_dir": str(work / "outputs"),
        "tracking.run_name": f"{ctx.study_name}-trial-{number:03d}",
        "tracking.wandb.group": ctx.study_name,
    }
    return trial_config(ctx.base, {**params, **own}, f"trial {number}")


def close_killed_run(ctx: TrialContext, frozen: optuna.trial.FrozenTrial) -> None:
    """End the tracking runs of a trial whose process was killed (left RUNNING) as KILLED."""
    ids = frozen.user_attrs.get("run_ids")
    if not ids:
        return
    try:
        cfg = run_config(ctx, frozen.number, dict(frozen.params))
    except ConfigError:
        return
    tracker = open_tracker(cfg, job="tune-trial", resume_ids=ids, fingerprint=ctx.fingerprint)
    tracker.set_tags({"tune.state": "killed"})
    tracker.finish("KILLED")


class Objective:
    """The study's objective: train one trial and return its best session-mean val loss.

    A trial whose values cannot train (a diverging loss, an impossible combination of keys)
    returns NaN, which Optuna records as a failed trial; the study goes on. A stop request
    (SIGTERM) raises :class:`TuneInterruptedError`; a resumed study runs its values again.
    """

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx

    def __call__(self, trial: optuna.Trial) -> float:
        ctx = self.ctx
        params = ctx.space.suggest(trial)
        trial.set_user_attr("started", time.time())
        try:
            cfg = run_config(ctx, trial.number, params)
        except ConfigError as exc:
            return self._failed(trial, str(exc))
        tracker = open_tracker(cfg, job="tune-trial", fingerprint=ctx.fingerprint)
        trial.set_user_attr("run_ids", tracker.run_ids())
        tags = {"tune.study": ctx.study_name, "tune.trial": str(trial.number)}
        if "mlflow" in ctx.parent_ids:
            tags[PARENT_TAG] = ctx.parent_ids["mlflow"]
        tracker.set_tags(tags)

        def report(epoch: int, row: dict[str, float]) -> bool:
            trial.report(row[METRIC], epoch)
            return trial.should_prune()

        state, status, value = "fail", "FAILED", math.nan
        try:
            result = run_training(cfg, tracker=tracker, overwrite=True, on_epoch=report)
            value = result.best_val_loss
            if result.stopped_on_epoch:
                state, status = "pruned", "FINISHED"
            elif result.stop_requested:
                state, status = "interrupted", "KILLED"
            else:
                state, status = "complete", "FINISHED"
        except (TrainingError, ConfigError) as exc:
            return self._failed(trial, str(exc))
        except KeyboardInterrupt:
            state, status = "interrupted", "KILLED"
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            tracker.set_tags({"tune.state": state, "tune.value": f"{value:.6g}"})
            tracker.finish(status)
        trial.set_user_attr("epochs", result.epochs_run)
        if state == "interrupted":
            trial.set_user_attr("interrupted", True)
            raise TuneInterruptedError(
                f"trial {trial.number} was stopped; rerun to resume the study"
            )
        if state == "pruned":
            raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run}")
        return value

    def _failed(self, trial: optuna.Trial, reason: str) -> float:
        first = reason.splitlines()[0] if reason else "unknown error"
        trial.set_user_attr("error", first)
        return math.nan


def _values(params: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def progress_line(study: optuna.Study, frozen: optuna.trial.FrozenTrial, target: int) -> str:
    """One line per finished trial: state, value, time, the best so far, the trial's values."""
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    started = frozen.user_attrs.get("started")
    seconds = f" in {time.time() - started:.0f} s" if started else ""
    state = frozen.state.name.lower()
    if frozen.state == optuna.trial.TrialState.COMPLETE:
        what = f"{METRIC} {frozen.value:.4f}"
    elif frozen.state == optuna.trial.TrialState.PRUNED and frozen.last_step is not None:
        value = frozen.intermediate_values[frozen.last_step]
        what = f"at epoch {frozen.last_step} ({METRIC} {value:.4f})"
    else:
        what = frozen.user_attrs.get("error", "")
    try:
        best = study.best_trial
        best_text = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_text = "no complete trial yet"
    return (
        f"trial {frozen.number} ({done}/{target}) {state}: {what}{seconds}; {best_text}; "
        f"{_values(frozen.params)}"
    )
