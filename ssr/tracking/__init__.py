"""Experiment tracking: one small interface that fans out to MLflow and Weights & Biases.

Nothing outside this package imports mlflow or wandb for tracking.
"""

from __future__ import annotations

from ssr.tracking.base import NullTracker, Tracker, open_tracker

__all__ = ["NullTracker", "Tracker", "open_tracker"]
