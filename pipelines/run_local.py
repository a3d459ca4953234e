"""Run the whole training pipeline on this machine through ``kfp.local`` (``make run-local``).

Defaults need no cluster, account or server: synthetic EMG, MLflow on a local SQLite store,
W&B offline, checkpoints on local disk, and the CPU-sized preset ``configs/small.yaml``
(``--task sentences``: ``configs/sentences_small.yaml`` on synthetic sentences, ending with the
registered model's transcript of a test recording). Everything lands under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Small enough to finish in minutes on a laptop CPU, big enough to learn the synthetic task.
LOCAL_CONFIG = REPO / "configs" / "small.yaml"
TASK_CONFIGS = {"words": LOCAL_CONFIG, "sentences": REPO / "configs" / "sentences_small.yaml"}


def _prepare_env(workdir: Path) -> None:
    """Local trackers, unless the user set others: MLflow on ``mlflow.db`` in the current folder
    (what ``make mlflow-ui`` browses) and W&B offline under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    # no cluster: the deploy step skips itself (it deploys where a $KUBECONFIG or a pod's
    # service account names a cluster, which a local run must not touch)
    os.environ.pop("KUBECONFIG", None)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(workdir.resolve()))
    os.environ.setdefault("MPLBACKEND", "Agg")


def run_local(
    workdir: str | Path = "local_outputs",
    epochs: int | None = None,
    synth_args: list[str] | None = None,
    overrides: list[str] | None = None,
    data_uri: str = "",
    pipeline_yaml: str | Path | None = None,
    min_accuracy: float | None = None,
    model_name: str | None = None,
    config: str | Path = LOCAL_CONFIG,
) -> dict[str, Any]:
    """Run the pipeline locally on ``config`` (plus ``overrides``); returns where its results
    are. ``epochs``, ``min_accuracy``, ``model_name`` and the rest of the gate default to the
    config's (``training.num_epochs``, the ``registry`` section; for sentences the pipeline
    gates on word accuracy, 1 - ``registry.max_wer``)."""
    from kfp import local

    from ssr.config import load_config

    config_yaml = Path(config).read_text()
    cfg = load_config(config, overrides)
    epochs = cfg.training.num_epochs if epochs is None else epochs
    registry = cfg.registry
    model_name = registry.model_name if model_name is None else model_name
    if min_accuracy is None:
        sentences = cfg.task == "sentences"
        min_accuracy = 1.0 - registry.max_wer if sentences else registry.min_accuracy

    workdir = Path(workdir).resolve()
    _prepare_env(workdir)
    root = workdir / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    arguments: dict[str, Any] = {
        "data_uri": data_uri,
        "config_yaml": config_yaml,
        "overrides": [*(overrides or []), f"training.output_dir={workdir / 'outputs'}"],
        "synth_args": list(synth_args or []),
        "epochs": epochs,
        "checkpoint_root": str(workdir / "checkpoints"),  # the step adds /<run id>
        "gpus_per_node": "0",  # a string parameter (see pipelines.training_pipeline)
        "num_nodes": 1,  # one process here; the exit handler then has no TrainJob to delete
        "model_name": model_name,
        "min_accuracy": min_accuracy,
        "margin": registry.margin,
        "p_value": registry.p_value,
        "baseline_margin": -1.0 if registry.baseline_margin is None else registry.baseline_margin,
    }
    if pipeline_yaml:
        from kfp import components

        pipeline = components.load_component_from_file(str(pipeline_yaml))
    else:
        from pipelines.training_pipeline import training_pipeline as pipeline
    started = time.time()
    pipeline(**arguments)
    elapsed = time.time() - started
    return summarize(root, elapsed, model_name)


def _newest_run(root: Path) -> Path:
    runs = [p for p in root.iterdir() if p.is_dir()]
    return max(runs, key=lambda p: p.stat().st_mtime)


def _task_output(task_dir: Path, name: str) -> Any:
    """The return value of a task that ran (None when it was skipped, e.g. by the gate)."""
    path = task_dir / "executor_output.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("parameterValues", {}).get(name)


def summarize(root: Path, elapsed: float, model_name: str) -> dict[str, Any]:
    """Collect the run's metrics, plots and registered model version."""
    run_dir = _newest_run(root)
    summary: dict[str, Any] = {"run_dir": str(run_dir), "wall_seconds": round(elapsed, 1)}
    report = run_dir / "evaluate" / "report"
    metrics = report / "metrics.json"
    if metrics.is_file():
        summary["metrics"] = str(metrics)
        from ssr.evaluation import read_metrics

        values = read_metrics(metrics)
        if values.get("task") == "sentences":
            summary.update(_sentence_scores(values))
        else:
            summary["test_accuracy"] = round(float(values["accuracy"]), 4)
            summary["test_macro_f1"] = round(float(values["macro_f1"]), 4)
        if "baseline" in values and "accuracy" in values["baseline"]:
            summary["baseline_test_accuracy"] = round(float(values["baseline"]["accuracy"]), 4)
            summary["baseline_test_macro_f1"] = round(float(values["baseline"]["macro_f1"]), 4)
        summary["report"] = str(run_dir / "evaluate" / "summary")  # report.html for the KFP UI
        summary["plots"] = sorted(str(p) for p in report.glob("*.png"))
    training_plots = root.parent / "outputs"
    for kind in ("confusion_matrix", "predictions", "posteriorgram"):  # the last epoch's
        found = sorted(training_plots.glob(f"{kind}_epoch_*.png"), key=os.path.getmtime)
        if found:
            summary.setdefault("plots", []).append(str(found[-1]))
    # [] with tune_trials=0 (no search here); on Kubeflow, the best trial's values
    summary["tuned_overrides"] = _task_output(run_dir / "tune", "Output")
    summary["registered_version"] = _task_output(run_dir / "register", "version")
    summary["deploy"] = _task_output(run_dir / "deploy", "Output")  # None: it did not run
    summary["model_name"] = model_name
    summary["mlflow_tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI")
    if summary["registered_version"]:
        summary.update(gate_outcome(model_name, str(summary["registered_version"])))
    return summary


def _sentence_scores(values: dict[str, Any]) -> dict[str, Any]:
    """The summary's numbers of a sentence evaluation (WER/CER with the LM and greedy, and the
    baseline's)."""
    out = {
        "test_wer": round(float(values["wer"]), 4),
        "test_cer": round(float(values["cer"]), 4),
        "test_greedy_wer": round(float(values["greedy"]["wer"]), 4),
        "test_greedy_cer": round(float(values["greedy"]["cer"]), 4),
    }
    for part in ("known_words", "unseen_words"):
        if part in values:
            out[f"test_{part}_wer"] = round(float(values[part]["wer"]), 4)
    if "baseline" in values:
        out["baseline_test_wer"] = round(float(values["baseline"]["wer"]), 4)
    return out


def transcribe_example(summary: dict[str, Any]) -> str | None:
    """``ssr predict`` with the registered sentence model on the run's first test recording;
    what it printed (None when nothing was registered or the run was a word run)."""
    import contextlib
    import io

    from ssr.cli import main as ssr_main

    version = summary.get("registered_version")
    if not version or "test_wer" not in summary:
        return None
    raw = Path(summary["run_dir"]) / "preprocess" / "processed" / "raw" / "test"
    found = sorted(raw.rglob("*.npz")) or sorted(raw.rglob("*_emg.npy"))
    if not found:
        return None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ssr_main(
            ["predict", "--model", f"models:/{summary['model_name']}/{version}", str(found[0])]
        )
    return out.getvalue().strip()


def gate_outcome(model_name: str, version: str) -> dict[str, str]:
    """``gate`` (promoted or rejected) and ``gate_reason`` of a registered version, from the
    decision tags the gate wrote on it; empty when they cannot be read."""
    from mlflow.tracking import MlflowClient

    try:
        tags = MlflowClient().get_model_version(model_name, version).tags
    except Exception:  # the summary must not fail on the tracking server
        return {}
    decision = tags.get("gate.decision")
    if decision not in ("promote", "reject"):
        return {}
    return {
        "gate": "promoted" if decision == "promote" else "rejected",
        "gate_reason": tags.get("gate.reason", ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="local_outputs")
    parser.add_argument(
        "--task",
        choices=sorted(TASK_CONFIGS),
        default="words",
        help="words (configs/small.yaml) or sentences (configs/sentences_small.yaml)",
    )
    parser.add_argument("--config", default=None, help="config file (default: the task's preset)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="default: the config's training.num_epochs"
    )
    parser.add_argument("--data-uri", default="", help="raw data; empty: synthetic")
    parser.add_argument("--pipeline-yaml", default=None, help="run the compiled YAML instead")
    parser.add_argument(
        "--synth-arg",
        action="append",
        default=None,
        dest="synth_args",
        help="option for `ssr data synth`, e.g. --synth-arg=--vocab=8",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=None,
        dest="overrides",
        help="config override section.key=value, applied on top of --config",
    )
    parser.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="default: the config's registry.min_accuracy",
    )
    args = parser.parse_args(argv)
    summary = run_local(
        args.workdir,
        args.epochs,
        args.synth_args,
        args.overrides,
        args.data_uri,
        args.pipeline_yaml,
        args.min_accuracy,
        config=args.config or TASK_CONFIGS[args.task],
    )
    print("\n=== ssr local pipeline run ===")
    print(json.dumps(summary, indent=2))
    if summary.get("tuned_overrides") == []:
        print(
            "\nTune: skipped (tune_trials=0); on Kubeflow, tune_trials=N searches N trials as a "
            "Katib Experiment before training (docs/tuning.md)."
        )
    example = transcribe_example(summary)
    if example:
        print(f"\nThe registered model transcribes a test recording:\n  {example}")
    if summary.get("registered_version"):
        version = f"{summary['model_name']} version {summary['registered_version']}"
        if summary.get("gate") == "promoted":
            print(f"\nRegistered {version}: promoted to champion ({summary['gate_reason']}).")
        elif summary.get("gate") == "rejected":
            print(
                f"\nRegistered {version}: rejected by the promotion gate, the champion stays "
                f"({summary['gate_reason']})."
            )
        else:
            print(f"\nRegistered {version}.")
        if summary.get("deploy") == "skipped":
            print(
                "Deploy: skipped, no Kubernetes cluster here (on Kubeflow the deploy step rolls "
                "the KServe InferenceService to the new champion: docs/serving.md)."
            )
        print(f"Browse it with: make mlflow-ui  (MLflow at {summary['mlflow_tracking_uri']})")
    else:
        what = "word accuracy (1 - WER)" if "test_wer" in summary else "accuracy"
        print(f"\nNothing registered: the model's test {what} is below min_accuracy.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
