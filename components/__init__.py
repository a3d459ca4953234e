"""Thin KFP v2 components; each calls one ``ssr`` step (the same code as the CLI command)."""

from components.evaluate import evaluate
from components.preprocess import preprocess
from components.register import register
from components.train import train

__all__ = ["evaluate", "preprocess", "register", "train"]
