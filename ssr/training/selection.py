"""Model selection signals shared by training, evaluation and the report."""

from __future__ import annotations

EARLY_FRACTION = 0.1


def early_best(best_epoch: int, num_epochs: int) -> bool:
    """True when the best epoch lies in the first tenth of the epoch budget (at least the
    first epoch): a sign that the model learns the training sessions rather than the task."""
    return 1 <= best_epoch <= max(1, int(num_epochs * EARLY_FRACTION))
