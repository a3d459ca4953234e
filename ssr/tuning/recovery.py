"""Resuming a study: the same config, space and data it started with, and the trials a kill or
a stop request left unfinished run again with their values.

A study's storage remembers what it was started with (Optuna user attributes). A resumed study
that mixed another space, config or data set into the same trials would compare unlike things,
so it is refused, naming the first difference.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ssr.config import Config
from ssr.errors import ConfigError
from ssr.tuning.space import SearchSpace
from ssr.tuning.trial import TrialContext, close_killed_run

log = logging.getLogger(__name__)

# config sections that do not change a trial's result: they may differ when a study resumes
IGNORED_SECTIONS = ("tracking.", "storage.")


def _plain(value: Any) -> Any:
    """``value`` as it reads back from the storage (JSON: tuples become lists)."""
    return json.loads(json.dumps(value))


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r}, now {new.get(key)!r}"
    return None


def check_resume(
    study: optuna.Study, cfg: Config, space: SearchSpace, fingerprint: str | None, db: Path
) -> None:
    """Record what a new study starts with, or refuse to resume it with something else."""
    config = {k: v for k, v in cfg.flat().items() if not k.startswith(IGNORED_SECTIONS)}
    current = _plain({"space": space.as_dict(), "config": config, "fingerprint": fingerprint})
    stored = study.user_attrs
    if "space" not in stored:
        for key, value in current.items():
            study.set_user_attr(key, value)
        return
    what = {"space": "search space", "config": "config", "fingerprint": "data set"}
    for key, label in what.items():
        old, new = stored.get(key), current[key]
        if key == "fingerprint" and (old is None or new is None):
            continue  # unknown (e.g. remote data): nothing to compare
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            flat_old = {k: json.dumps(v) for k, v in old.items()}
            flat_new = {k: json.dumps(v) for k, v in new.items()}
            diff = _first_difference(flat_old, flat_new)
        else:
            diff = f"fingerprint {old}, now {new}"
        raise ConfigError(
            f"{db}: study {study.study_name!r} was started with another {label} ({diff}); "
            "resume it with the same config, space and overrides, or start another study "
            "(--out or --study-name)"
        )


def recover_stopped_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, ctx: TrialContext
) -> None:
    """Trials left RUNNING (their process was killed: no other ``ssr tune`` holds the study,
    see :class:`~ssr.tuning.storage.StudyLock`) become FAIL, their tracking runs KILLED; those and
    trials stopped by a request run again with the same values, once, as new trials."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in trials:
        killed = t.state == TrialState.RUNNING
        stopped = t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
        if not (killed or stopped):
            continue
        if killed:
            try:
                close_killed_run(ctx, t)
            except Exception as exc:  # tracking must not block the resume
                log.warning("trial %d: could not close its tracking runs: %s", t.number, exc)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if t.number in retried or not t.params:
            continue
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        log.info(
            "trial %d was %s; a new trial runs its values again",
            t.number,
            "killed" if killed else "stopped",
        )
