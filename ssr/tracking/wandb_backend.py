"""Weights & Biases tracking backend (online with ``WANDB_API_KEY``, else offline files).

W&B wants one increasing step per run, but the trainer logs ``train/*`` per optimiser step and
everything else per epoch. So each metric is bound to its own x-axis with ``define_metric``:
``train/*`` against ``global_step``, all other keys against ``epoch``; the axis value travels in
the logged dict and W&B's own step just counts calls.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ssr.redact import redact, redact_values
from ssr.tracking.tracker import RunSpec, Tracker, table_rows

log = logging.getLogger(__name__)

TRAIN_PREFIX = "train/"
TRAIN_AXIS = "global_step"
EPOCH_AXIS = "epoch"
MODEL_SUFFIXES = {".pt", ".pth", ".safetensors", ".ckpt"}


def resolve_mode(configured: str) -> str:
    """``WANDB_MODE`` if set; ``auto`` means online with ``WANDB_API_KEY``, else offline."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    if configured == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return configured


def _artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "artifact"


def _reference(source: str) -> str | None:
    """``source`` as a W&B reference URI; None for a local path that is not there (W&B lists
    a local directory's files, by path only: ``checksum=False`` reads no data)."""
    if "://" in source:
        return source
    path = Path(source)
    return path.resolve().as_uri() if path.exists() else None


class WandbTracker(Tracker):
    """A :class:`~ssr.tracking.tracker.Tracker` writing one W&B run through its own run object."""

    @classmethod
    def open(cls, spec: RunSpec) -> WandbTracker | None:
        """The run of ``spec.cfg.tracking.wandb``; None in ``disabled`` mode."""
        wcfg = spec.cfg.tracking.wandb
        mode = resolve_mode(wcfg.mode)
        if mode == "disabled":
            return None
        resumed = bool(spec.resume_id) and not spec.cfg.tracking.run_name
        return cls(
            wcfg.project,
            None if resumed else spec.name,
            spec.cfg.flat(),
            spec.tags,
            entity=wcfg.entity,
            mode=mode,
            directory=os.environ.get("WANDB_DIR") or wcfg.dir,
            resume_id=spec.resume_id,
            job=spec.job,
            group=wcfg.group,
        )

    def __init__(
        self,
        project: str,
        run_name: str | None,
        config: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        entity: str | None = None,
        mode: str = "offline",
        directory: str | os.PathLike[str] = ".",
        resume_id: str | None = None,
        job: str = "train",
        init_timeout: float = 60.0,
        group: str | None = None,
    ) -> None:
        import wandb  # deferred: slow to import, and only needed when W&B is on

        self._wandb = wandb
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            # W&B validates the mode itself; WANDB_MODE may hold values its hint leaves out.
            mode=mode,  # type: ignore[arg-type]
            dir=str(directory),
            id=resume_id,
            resume="allow",
            name=run_name,
            job_type=job,
            group=group,
            tags=[job],
            config=redact_values(config),
            reinit="create_new",
            settings=wandb.Settings(init_timeout=init_timeout),
        )
        self.run.define_metric(TRAIN_AXIS)
        self.run.define_metric(EPOCH_AXIS)
        self.run.define_metric(f"{TRAIN_PREFIX}*", step_metric=TRAIN_AXIS)
        self._bound: set[str] = set()
        if tags:
            self.set_tags(tags)
        log.info("tracking: wandb run %s (%s mode) in project %r", self.run.id, mode, project)

    def _log(self, values: Mapping[str, Any], axis: str, step: int | None) -> None:
        """Log values against ``axis`` (``global_step`` or ``epoch``) at ``step``."""
        if axis == EPOCH_AXIS:
            for key in values:
                if key not in self._bound and key not in (TRAIN_AXIS, EPOCH_AXIS):
                    self.run.define_metric(key, step_metric=EPOCH_AXIS)
                    self._bound.add(key)
        row = dict(values)
        if step is not None:
            row[axis] = step
        self.run.log(row)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(redact_values(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        train = {k: float(v) for k, v in metrics.items() if k.startswith(TRAIN_PREFIX)}
        other = {k: float(v) for k, v in metrics.items() if not k.startswith(TRAIN_PREFIX)}
        if train:
            self._log(train, TRAIN_AXIS, step)
        if other:
            self._log(other, EPOCH_AXIS, step)

    def log_image(self, path: str | os.PathLike[str], key: str, step: int | None = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image")
        self._log({key: self._wandb.Image(str(path))}, EPOCH_AXIS, step)

    def log_confusion_matrix(
        self,
        y_true: Sequence[int],
        y_pred: Sequence[int],
        labels: Sequence[str],
        key: str,
        step: int | None = None,
    ) -> None:
        plot = self._wandb.plot.confusion_matrix(
            y_true=[int(v) for v in y_true],
            preds=[int(v) for v in y_pred],
            class_names=list(labels),
            title=key,
        )
        self._log({key: plot}, EPOCH_AXIS, step)

    def log_table(
        self,
        key: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        step: int | None = None,
    ) -> None:
        """A ``wandb.Table`` under ``key`` against the epoch axis at ``step``."""
        data = table_rows(columns, rows)
        self._log({key: self._wandb.Table(columns=list(columns), data=data)}, EPOCH_AXIS, step)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"{src}: no such file to log as an artifact")
        kind = "model" if src.suffix in MODEL_SUFFIXES else "file"
        name = _artifact_name(f"{src.stem}-{self.run.id}")
        artifact = self._wandb.Artifact(name, type=kind, metadata={"source": src.name})
        if src.is_dir():
            artifact.add_dir(str(src))
        else:
            artifact.add_file(str(src))
        self.run.log_artifact(artifact)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.run.config.update(
            {f"tags.{k}": redact(str(v)) for k, v in tags.items()}, allow_val_change=True
        )

    def log_dataset(
        self,
        name: str,
        digest: str,
        source: str,
        context: str = "training",
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """A ``dataset`` artifact used by the run: a reference to ``source`` (not a copy) plus
        ``dataset.json`` with the fingerprint, so each fingerprint is its own version and the
        W&B lineage graph links data, run and model.

        Offline, ``use_artifact`` refuses drafts; the artifact is then written with the same
        "use after commit" flag ``use_artifact`` sends, so ``wandb sync`` marks it used."""
        meta = redact_values({"fingerprint": digest, "source": source, "context": context})
        meta.update(profile or {})
        artifact = self._wandb.Artifact(_artifact_name(name), type="dataset", metadata=meta)
        with artifact.new_file("dataset.json") as out:
            json.dump(meta, out, sort_keys=True)
        reference = _reference(meta["source"])
        if reference:
            artifact.add_reference(reference, name="data", checksum=False)
        if self.run.settings._offline:
            self.run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
        else:
            self.run.use_artifact(artifact)

    def run_ids(self) -> dict[str, str]:
        return {"wandb": self.run.id}

    def finish(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
