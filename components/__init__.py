"""Thin KFP v2 components; each calls one ``ssr`` step (the same code as the CLI command)."""

from components.cleanup import cleanup_run, delete_trainjob
from components.deploy import deploy
from components.evaluate import evaluate
from components.preprocess import preprocess
from components.register import register
from components.train import train
from components.train_distributed import train_distributed
from components.tune import tune

__all__ = [
    "cleanup_run",
    "delete_trainjob",
    "deploy",
    "evaluate",
    "preprocess",
    "register",
    "train",
    "train_distributed",
    "tune",
]
