"""Model selection signals shared by training, evaluation and the report."""

from __future__ import annotations

from typing import Any, TypeGuard

EARLY_FRACTION = 0.1


def early_best(best_epoch: int, num_epochs: int) -> bool:
    """True when the best epoch lies in the first tenth of the epoch budget (at least the
    first epoch): a sign that the model learns the training sessions rather than the task."""
    return 1 <= best_epoch <= max(1, int(num_epochs * EARLY_FRACTION))


def selection_of(state: dict[str, Any]) -> dict[str, Any] | None:
    """``{"best_epoch", "num_epochs", "early_best"}`` from a training checkpoint's state, or
    None for a checkpoint without them (older ones, hand-made ones)."""
    best = state.get("best_epoch")
    config = state.get("config")
    training = config.get("training") if isinstance(config, dict) else None
    num = training.get("num_epochs") if isinstance(training, dict) else None
    if not (_integer(best) and _integer(num)):
        return None
    return {"best_epoch": best, "num_epochs": num, "early_best": early_best(best, num)}


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
