"""Pipeline steps: what each KFP component runs, expressed as ``ssr`` CLI invocations.

Every step calls :func:`ssr.cli.main` with the same arguments a user would type, so whatever
a component does the CLI can do too; the steps only lay out artifact folders and read back the
files the commands wrote. A Dataset artifact folder holds ``processed/`` (the model-ready data
set) and ``raw/test/`` (the raw test recordings the promotion gate may re-featurise).
The multi-node train step and its clean-up are in :mod:`ssr.steps.trainjob`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssr.errors import SSRError
from ssr.training.selection import selection_of
from ssr.training.signals import sigterm_when_parent_dies

log = logging.getLogger(__name__)

PROCESSED = "processed"
PREEMPTED = 143  # ``ssr train``'s exit status after SIGTERM (128 + 15)
RAW = "raw"
SYNTH_LM_TEXT = "lm_text.txt"  # written by `ssr data synth --task sentences`


class StepError(SSRError):
    """An ``ssr`` command run by a pipeline step exited with an error."""


def run_cli(args: Sequence[str]) -> None:
    """Run ``ssr ARGS`` in this process; raise :class:`StepError` on a non-zero exit, and exit
    with 143 when the command was stopped by SIGTERM (it has checkpointed by then)."""
    from ssr.cli import main

    log.info("ssr %s", " ".join(args))
    code = main(list(args))
    if code == PREEMPTED:  # checkpointed; the step exits like the command, a retry resumes
        log.warning("`ssr %s` stopped on SIGTERM after saving a checkpoint", " ".join(args))
        raise SystemExit(code)
    if code:
        raise StepError(f"`ssr {' '.join(args)}` exited with status {code}")


def config_args(config_yaml: str, workdir: str | Path) -> list[str]:
    """``["--config", FILE]`` holding ``config_yaml``, or ``[]`` for the embedded defaults."""
    if not config_yaml.strip():
        return []
    path = Path(workdir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_yaml)
    return ["--config", str(path)]


def _split_dirs(raw: str) -> list[str]:
    from ssr.storage import join

    return [f"data.{name}_dir={join(raw, name)}" for name in ("train", "val", "test")]


def preprocess_step(
    artifact_dir: str,
    data_uri: str,
    config_yaml: str,
    overrides: Sequence[str],
    synth_args: Sequence[str],
) -> dict[str, Any]:
    """``ssr data synth`` (when ``data_uri`` is empty) then ``ssr preprocess`` into the artifact."""
    from ssr.config import load_config
    from ssr.data.processed import read_manifest
    from ssr.storage import is_s3, localize

    out = Path(artifact_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_args = config_args(config_yaml, out / "config")
    cfg = load_config(cfg_args[1] if cfg_args else None, list(overrides))
    raw = out / RAW
    extra: list[str] = []
    if data_uri and is_s3(data_uri):  # mirrored with the config's storage settings
        source = str(localize(data_uri, out / ".cache", cfg.storage))
    elif data_uri:
        source = data_uri
    else:
        task = [] if "--task" in synth_args else ["--task", cfg.task]
        run_cli(["data", "synth", "--out", str(raw), *task, *synth_args])
        source = str(raw)
        if cfg.task == "sentences" and not cfg.decoding.lm_text:  # the generator's LM text
            extra.append(f"decoding.lm_text={raw / SYNTH_LM_TEXT}")
    run_cli(
        [
            "preprocess",
            *cfg_args,
            *overrides,
            *extra,
            *_split_dirs(source),
            f"data.processed_dir={out / PROCESSED}",
        ]
    )
    if data_uri:  # keep the raw test split beside the features for the promotion gate
        shutil.copytree(Path(source) / "test", raw / "test", dirs_exist_ok=True)
        if is_s3(data_uri):
            shutil.rmtree(out / ".cache", ignore_errors=True)
    manifest = read_manifest(out / PROCESSED)
    return {
        "fingerprint": manifest["fingerprint"],
        "labels": manifest["labels"],
        "utterances": {k: v["utterances"] for k, v in manifest["splits"].items()},
    }


def _data_overrides(artifact_dir: str) -> list[str]:
    root = Path(artifact_dir)
    return [f"data.processed_dir={root / PROCESSED}", f"data.test_dir={root / RAW / 'test'}"]


RUN_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"  # dsl.PIPELINE_JOB_ID_PLACEHOLDER
WRITE_PROBE = ".ssr-write-probe"


def checkpoint_dir_for(checkpoint_root: str, run_id: str) -> str:
    """``<checkpoint_root>/<run_id>``: each pipeline run trains in its own folder.

    The run id comes in as its own parameter (KFP substitutes the job-id placeholder only in a
    parameter that is exactly the placeholder), so an unsubstituted or empty one is an error
    here rather than a folder that every run would share.
    """
    from ssr.storage import join

    run_id = run_id.strip()
    if not run_id or "{{" in run_id or "/" in run_id:
        raise StepError(
            f"run id {run_id!r} is not a pipeline run id: pass dsl.PIPELINE_JOB_ID_PLACEHOLDER "
            "alone as the train step's run_id so that KFP substitutes it"
        )
    if not checkpoint_root.strip():
        raise StepError("checkpoint_root is empty: give an s3:// prefix or a folder")
    return join(checkpoint_root.rstrip("/"), run_id)


def check_writable(checkpoint_dir: str, storage: Any = None) -> None:
    """Write and delete a small object in ``checkpoint_dir``: a missing bucket or a key that
    may not write there fails here, in seconds, with one message, not after the first epoch."""
    from ssr.storage import delete, join, write_bytes

    probe = join(checkpoint_dir, WRITE_PROBE)
    try:
        write_bytes(probe, b"ssr checkpoint write probe\n", storage)
        delete(probe, storage)
    except (SSRError, OSError) as exc:
        raise StepError(
            f"cannot write checkpoints to {checkpoint_dir}: {exc}. Set checkpoint_root to a "
            "prefix the step's S3 credentials may write, e.g. s3://mlpipeline/shared/"
            "ssr-checkpoints (KFP's artifact bucket), or create the bucket first"
        ) from None


def training_overrides(checkpoint_dir: str, run_id: str, epochs: int) -> list[str]:
    """The overrides every train step adds: where to checkpoint, the run id, and the epoch
    budget (``epochs`` 0 keeps the config's)."""
    return [
        f"training.checkpoint_dir={checkpoint_dir}",
        # Quoted: an override value is read as YAML, and an id of digits would be a number.
        f"training.run_id={json.dumps(run_id.strip())}",
        *([f"training.num_epochs={epochs}"] if epochs > 0 else []),
    ]


def export_best(checkpoint_dir: str, model_path: str, storage: Any, run_id: str) -> dict[str, Any]:
    """Copy ``<checkpoint_dir>/best_model.pth`` to ``model_path``; what the step reports,
    including ``early_best`` (the best epoch lies in the first tenth of the epoch budget)."""
    from ssr.storage import download_to, join
    from ssr.training.checkpoint import BEST, load_checkpoint

    download_to(join(checkpoint_dir, BEST), model_path, storage)
    state = load_checkpoint(model_path)
    selection = selection_of(state) or {}
    early = bool(selection.get("early_best", False))
    if early:
        log.warning(
            "early best: the exported checkpoint is from epoch %s of %s, in the first tenth of "
            "training; the model may have learned the training sessions rather than the task",
            selection["best_epoch"],
            selection["num_epochs"],
        )
    return {
        "best_val_loss": float(state.get("best_val_loss", float("nan"))),
        "epoch": int(state.get("epoch", 0)),
        "early_best": early,
        "checkpoint_dir": checkpoint_dir,
        "run_id": run_id.strip(),
    }


def train_step(
    artifact_dir: str,
    model_path: str,
    checkpoint_root: str,
    run_id: str,
    config_yaml: str,
    overrides: Sequence[str],
    epochs: int,
) -> dict[str, Any]:
    """``ssr train --resume auto`` in ``<checkpoint_root>/<run_id>`` (a retried step continues
    there; a checkpoint of another run or data set is refused), then export ``best_model.pth``."""
    from ssr.config import load_config

    sigterm_when_parent_dies()  # a SIGTERM to KFP's `sh -ec` wrapper reaches the training too
    checkpoint_dir = checkpoint_dir_for(checkpoint_root, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_args = config_args(config_yaml, tmp)
        args = [
            *overrides,
            *_data_overrides(artifact_dir),
            *training_overrides(checkpoint_dir, run_id, epochs),
        ]
        storage = load_config(cfg_args[1] if cfg_args else None, args).storage
        check_writable(checkpoint_dir, storage)
        run_cli(["train", *cfg_args, *args, "--resume", "auto"])
    return export_best(checkpoint_dir, model_path, storage, run_id)


def evaluate_step(
    artifact_dir: str, model_path: str, report_dir: str, config_yaml: str, overrides: Sequence[str]
) -> dict[str, Any]:
    """``ssr evaluate --split test``; returns scalars, the quality the pipeline gates on (test
    accuracy, or word accuracy 1 - WER for sentences), labels and the confusion matrix."""
    with tempfile.TemporaryDirectory() as tmp:
        run_cli(
            [
                "evaluate",
                *config_args(config_yaml, tmp),
                *overrides,
                *_data_overrides(artifact_dir),
                "--checkpoint",
                model_path,
                "--split",
                "test",
                "--out",
                report_dir,
            ]
        )
    from ssr.evaluation import read_metrics

    metrics = read_metrics(Path(report_dir) / "metrics.json")
    if metrics.get("task") == "sentences":
        scalars = {k: float(metrics[k]) for k in ("wer", "cer", "loss")}
        scalars |= {f"greedy_{k}": float(v) for k, v in metrics["greedy"].items()}
        for key, value in (metrics.get("baseline") or {}).items():
            if key != "name":
                scalars[f"baseline_{key}"] = float(value)
        return {
            "task": "sentences",
            "scalars": scalars,
            # word accuracy (floored at 0: insertions can push WER above 1), higher is better
            "quality": max(0.0, 1.0 - scalars["wer"]),
            "report_html": str(Path(report_dir) / "report.html"),
        }
    scalars = {k: float(metrics[k]) for k in ("accuracy", "macro_f1", "loss")}
    for key, value in (metrics.get("baseline") or {}).items():
        if key in ("accuracy", "macro_f1"):
            scalars[f"baseline_{key}"] = float(value)
    return {
        "task": "words",
        "scalars": scalars,
        "quality": scalars["accuracy"],
        "report_html": str(Path(report_dir) / "report.html"),
        "labels": list(metrics["labels"]),
        "confusion_matrix": [[int(v) for v in row] for row in metrics["confusion_matrix"]],
    }


GATE_TAG = "pipeline.gate_action"  # set on a version once the step's gate has run


def register_step(
    artifact_dir: str,
    model_path: str,
    report_dir: str,
    pipeline_run_id: str,
    config_yaml: str,
    overrides: Sequence[str],
    model_name: str,
    min_accuracy: float,
    margin: float,
    p_value: float,
    baseline_margin: float = 0.0,
) -> dict[str, Any]:
    """``ssr register`` then ``ssr promote --version V``: challenger, gate, maybe champion.

    Idempotent per pipeline run: when ``pipeline_run_id`` already registered a version (a
    retried task, a re-run), that version is reused and no alias moves; the gate runs again
    only if it never finished for that version (its ``pipeline.gate_action`` tag is unset).
    ``promoted`` says whether the gate made the version champion (then the deploy step runs).
    A negative ``baseline_margin`` skips the baseline check (``registry.baseline_margin: null``;
    a KFP float parameter cannot be null). For a sentence model ``min_accuracy`` is a word
    accuracy: the gate refuses a WER above ``1 - min_accuracy`` (``registry.max_wer``).
    """
    from ssr.config import load_config
    from ssr.registry.promote import CHAMPION, alias_version, promote
    from ssr.registry.register import connect, register_model

    if not pipeline_run_id.strip() or "{{" in pipeline_run_id:
        raise StepError(f"pipeline_run_id {pipeline_run_id!r} is not a pipeline run id")
    # for sentences the pipeline's quality is word accuracy: the gate's WER ceiling follows it
    max_wer = min(1.0, max(1e-6, 1.0 - min_accuracy))
    gate = [
        f"registry.model_name={model_name}",
        f"registry.min_accuracy={min_accuracy}",
        f"registry.max_wer={max_wer}",
        f"registry.margin={margin}",
        f"registry.p_value={p_value}",
        f"registry.baseline_margin={'null' if baseline_margin < 0 else baseline_margin}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        args = config_args(config_yaml, tmp)
        cfg = load_config(
            args[1] if args else None, [*overrides, *_data_overrides(artifact_dir), *gate]
        )
    client = connect(cfg)
    info = register_model(
        cfg,
        model_path,
        report_dir,
        pipeline_run_id=pipeline_run_id,
        model_name=model_name,
        client=client,
    )
    done = info.tags.get(GATE_TAG) if info.existing else None
    if done:
        champion = alias_version(client, model_name, CHAMPION)
        log.info(
            "pipeline run %s already registered %s version %s (gate: %s); nothing moved",
            pipeline_run_id,
            model_name,
            info.version,
            done,
        )
        return {
            "version": info.version,
            "action": done,
            "champion": champion,
            "model_uri": info.model_uri,
            "existing": True,
            "promoted": done == "promote",
        }
    result = promote(cfg, client=client, model_name=model_name, version=info.version)
    client.set_model_version_tag(model_name, info.version, GATE_TAG, result.action)
    log.info(
        "registered %s version %s: %s (champion %s -> %s)",
        model_name,
        info.version,
        result.action,
        result.champion_before,
        result.champion_after,
    )
    return {
        "version": info.version,
        "action": result.action,
        "champion": result.champion_after,
        "model_uri": info.model_uri,
        "existing": info.existing,
        "promoted": result.action == "promote",
    }
