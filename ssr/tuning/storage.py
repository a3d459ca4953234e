"""Where a study lives: its SQLite storage and the lock that tells a killed study from a
running one."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import optuna

from ssr.tuning.space import SearchSpace
from ssr.tuning.trial import TuneError

STUDY_DB = "study.db"
LOCK = ".study.lock"


class StudyLock:
    """``flock`` on a file in the study folder: exclusive while a study starts (no other
    ``ssr tune`` may use the folder, so a trial left RUNNING there was killed), then shared
    between the study's processes; the kernel drops it when they die."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def exclusive(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise TuneError(
                f"{self.path.parent}: another ssr tune is running this study; wait for it, or "
                "use another --out"
            ) from None

    def share(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def close(self) -> None:
        os.close(self.fd)


def open_storage(out_dir: str | Path) -> optuna.storages.RDBStorage:
    """The study's SQLite storage (a busy writer is waited for: worker processes share it)."""
    url = f"sqlite:///{(Path(out_dir) / STUDY_DB).resolve()}"
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def open_study(
    storage: optuna.storages.BaseStorage, name: str, space: SearchSpace, seed: int
) -> optuna.Study:
    """Create the study or load it; its TPE sampler seeded with ``seed``."""
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if space.pruning:
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=space.pruner_startup_trials, n_warmup_steps=space.warmup_epochs
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO lines: one per trial, long
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.sampler_startup_trials)
    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction="minimize",
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
