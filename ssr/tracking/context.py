"""Where a run came from: git commit, package versions, device and host, and a default run name."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssr.config import Config

# tag name -> distribution (this project's distribution is ssr-emg; its import package ssr)
PACKAGES = {
    "ssr": "ssr-emg",
    "torch": "torch",
    "numpy": "numpy",
    "mlflow": "mlflow",
    "wandb": "wandb",
}
GIT_COMMIT_ENV = "SSR_GIT_COMMIT"


def _git(*args: str) -> str | None:
    """Output of a git command run in the directory of this package's source, or None."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit() -> str:
    """The source checkout's commit; else ``$SSR_GIT_COMMIT`` (set in images); else ``unknown``."""
    commit = _git("rev-parse", "HEAD")
    if commit:
        return commit
    return os.environ.get(GIT_COMMIT_ENV) or "unknown"


def git_dirty() -> str:
    """``true`` if tracked files differ from HEAD, ``false`` if not, ``unknown`` outside git."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return "unknown"
    return "true" if status else "false"


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a run's result."""
    versions = {}
    for name, dist in PACKAGES.items():
        try:
            versions[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_device(requested: str = "auto") -> str:
    """A readable name of the device a run uses, e.g. ``cuda:NVIDIA H100`` or ``cpu``."""
    import torch

    if requested != "cpu" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def run_tags(
    cfg: Config, job: str, fingerprint: str | None = None, device: str | None = None
) -> dict[str, str]:
    """Tags every run carries: job, git commit, data fingerprint, versions, device and host."""
    tags = {
        "job": job,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "device": device or describe_device(cfg.training.device),
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
    if fingerprint:
        tags["data.fingerprint"] = fingerprint
    tags.update({f"version.{name}": v for name, v in package_versions().items()})
    return tags


def data_fingerprint(processed_dir: str) -> str | None:
    """The fingerprint in a local processed data set's manifest; None if unreadable or remote."""
    if "://" in processed_dir:
        return None
    try:
        manifest = json.loads((Path(processed_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    value = manifest.get("fingerprint") if isinstance(manifest, dict) else None
    return str(value) if value else None


def default_run_name(cfg: Config, job: str, fingerprint: str | None = None) -> str:
    """``tracking.run_name`` if set, else ``{job}-h{hidden}-l{layers}[-{fingerprint8}]-{time}``."""
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    parts = [job, f"h{cfg.model.hidden_size}", f"l{cfg.model.num_layers}"]
    if fingerprint:
        parts.append(fingerprint[:8])
    parts.append(time.strftime("%Y%m%d-%H%M%S"))
    return "-".join(parts)
