"""Training: :mod:`~ssr.training.job` (the whole ``ssr train`` job: resume resolution,
tracker, fit), :mod:`~ssr.training.trainer` (the loop), checkpoints, early stopping, devices,
DDP helpers and SIGTERM handling.

This package's ``__init__`` imports nothing: importing one of its modules (the evaluation
reads checkpoints through :mod:`~ssr.training.checkpoint`) must not load the trainer, which
imports the evaluation.
"""
