"""``ssr tune``: a 3-trial study of a tiny model end to end against a real MLflow server and
offline W&B, a study killed mid-trial and resumed, the best config trained by ``ssr train``,
and search-space files refused with one line naming the key."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from helpers_data import tiny_overrides
from mlflow.tracking import MlflowClient
from wandb_offline import read_records

from ssr.cli import main
from ssr.config import load_config
from ssr.errors import ConfigError
from ssr.training.job import run_training
from ssr.tuning.space import load_space, parse_space
from ssr.tuning.storage import LOCK, StudyLock
from ssr.tuning.study import TuneOptions, run_study

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = {
    "sampler": {"startup_trials": 2},
    "pruner": {"startup_trials": 1, "warmup_epochs": 1},
    "params": {
        "training.learning_rate": {"type": "log", "low": 1e-3, "high": 1e-2},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "model.hidden_size": {"type": "categorical", "choices": [8, 16]},
        "training.augment.time_masks": {"type": "int", "low": 0, "high": 2},
    },
}


def _space(path: Path, space: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump(space or SPACE))
    return path


def _overrides(processed: Path, work: Path, uri: str | None = None, **extra: object) -> list[str]:
    tracking = {"tracking__mlflow__enabled": False, "tracking__wandb__enabled": False}
    if uri:
        tracking = {
            "tracking__mlflow__enabled": True,
            "tracking__mlflow__tracking_uri": uri,
            "tracking__mlflow__experiment": f"tune-{uuid.uuid4().hex[:8]}",
            "tracking__wandb__enabled": extra.pop("wandb", True),
        }
    return tiny_overrides(
        processed,
        work,
        training__viz_interval=1000,  # no plots: seconds per trial on a busy machine
        training__save_interval=1000,
        **tracking,
        **extra,
    )


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def _wandb_groups(wandb_dir: Path) -> dict[str, str]:
    """display name -> group of every offline W&B run under ``wandb_dir``."""
    groups = {}
    for run_dir in (wandb_dir / "wandb").glob("offline-run-*"):
        for record in read_records(next(run_dir.glob("run-*.wandb"))):
            if record.WhichOneof("record_type") == "run":
                groups[record.run.display_name] = record.run.run_group
                break
    return groups


@pytest.mark.slow
def test_a_study_nests_its_trials_and_writes_a_best_config_ssr_train_loads(
    processed, mlflow_server, tmp_path, caplog
):
    out = tmp_path / "study"
    args = _overrides(processed, tmp_path / "work", mlflow_server.uri)
    experiment = next(a for a in args if a.startswith("tracking.mlflow.experiment=")).split("=")[1]
    space = _space(tmp_path / "space.yaml")
    command = ["tune", "--space", str(space), "--trials", "3", "--out", str(out), *args]
    assert main(command) == 0
    progress = [r.getMessage() for r in caplog.records if r.name == "ssr.tuning.workers"]
    lines = [re.match(r"trial (\d) \((\d)/3\) (complete|pruned): ", m) for m in progress]
    assert len(lines) == 3 and all(lines), progress
    assert [(int(m[1]) + 1, int(m[2])) for m in lines if m] == [(1, 1), (2, 2), (3, 3)]
    epochs = [r for r in caplog.records if r.name.startswith("ssr.training") and r.levelno < 30]
    assert not epochs  # the trainer's own INFO lines are hidden during a study

    study = _study(out)
    trials = {t.number: t for t in study.trials}
    assert len(trials) == 3 and trials[0].user_attrs.get("baseline")  # the config's own values
    assert trials[0].params["training.learning_rate"] == 0.003
    states = {n: t.state.name.lower() for n, t in trials.items()}
    assert set(states.values()) <= {"complete", "pruned"}

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "study")
    children = [r for r in runs if r is not parent]
    assert len(children) == 3
    for child in children:
        number = int(child.data.tags["tune.trial"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["tune.state"] == states[number]
        assert child.info.status == "FINISHED"
        for key, value in trials[number].params.items():
            assert child.data.params[key] == str(value)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["space.training.learning_rate"] == "float [0.001, 0.01] log"
    best = study.best_trial
    assert parent.data.tags["tune.best_trial"] == str(best.number)
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "tune")]
    assert artifacts == ["tune/best.yaml", "tune/space.yaml"]
    groups = _wandb_groups(tmp_path)
    assert groups == {
        name: "study" for name in ["study", *(f"study-trial-00{i}" for i in range(3))]
    }

    best_yaml = out / "best.yaml"
    cfg = load_config(best_yaml)
    assert cfg.training.learning_rate == best.params["training.learning_rate"]
    assert cfg.model.hidden_size == best.params["model.hidden_size"]
    assert cfg.training.checkpoint_dir == str(tmp_path / "work" / "checkpoints")  # not a trial's
    assert cfg.tracking.wandb.group is None and cfg.tracking.run_name is None
    assert not list(out.glob(".best.yaml.*"))  # nothing left of the atomic write
    train = ["train", "--config", str(best_yaml), "training.num_epochs=1"]
    assert main([*train, "tracking.mlflow.enabled=false", "tracking.wandb.enabled=false"]) == 0
    assert (tmp_path / "work" / "checkpoints" / "best_model.pth").is_file()

    # the same command again: the study has its 3 trials, nothing is trained again
    assert main(command) == 0
    assert len(_study(out).trials) == 3
    assert len(client.search_runs([exp.experiment_id])) == 4
    # another space is refused for this study
    changed = {
        **SPACE,
        "params": {**SPACE["params"], "model.dropout": {"type": "float", "low": 0.0, "high": 0.5}},
    }
    _space(space, changed)
    with pytest.raises(ConfigError, match=r"another search space \(params: .*model.dropout"):
        run_study(load_config(None, args), load_space(space), TuneOptions(str(out), 3))


@pytest.mark.slow
def test_a_killed_study_resumes_without_rerunning_finished_trials(
    processed, mlflow_server, tmp_path
):
    out = tmp_path / "killed"
    space = {**SPACE, "pruner": {"enabled": False}}
    args = _overrides(processed, tmp_path / "work", mlflow_server.uri, wandb=False)
    args.append("training.num_epochs=8")
    command = ["tune", "--space", str(_space(tmp_path / "s.yaml", space)), "--trials", "3"]
    command += ["--out", str(out), *args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssr", *command],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:  # until the first trial has finished
        seen.append(line)
        if re.search(r"trial 0 \(1/3\) complete", line):
            break
    deadline = time.monotonic() + 60
    while not any(t.state.name == "RUNNING" and t.intermediate_values for t in _study(out).trials):
        assert time.monotonic() < deadline, "".join(seen)
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    before = {t.number: (t.state.name, t.params, t.value) for t in _study(out).trials}
    assert before[0][0] == "COMPLETE" and before[1][0] == "RUNNING"

    assert main(command) == 0
    after = {t.number: t for t in _study(out).trials}
    assert after[0].value == before[0][2]  # finished trials are kept, not run again
    assert after[1].state.name == "FAIL"
    retried = [t for t in after.values() if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].params == before[1][1]
    finished = [t for t in after.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and len(after) == 4
    assert len({t.params["training.learning_rate"] for t in finished}) == 3
    killed_run = after[1].user_attrs["run_ids"]["mlflow"]
    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(killed_run).info.status == "KILLED"
    assert client.get_run(killed_run).data.tags["tune.state"] == "killed"
    parents = {
        r.data.tags["mlflow.parentRunId"]
        for r in client.search_runs([client.get_run(killed_run).info.experiment_id])
        if "mlflow.parentRunId" in r.data.tags
    }
    assert len(parents) == 1  # the resumed study continued its own run


@pytest.mark.slow
def test_parallel_trials_run_exactly_the_budget(processed, tmp_path):
    out = tmp_path / "parallel"
    cfg = load_config(None, _overrides(processed, tmp_path / "work", training__num_epochs=2))
    space = parse_space({**SPACE, "pruner": {"enabled": False}}, "space")
    result = run_study(cfg, space, TuneOptions(str(out), 3, jobs=2))
    states = [t.state.name for t in _study(out).trials]
    assert states == ["COMPLETE"] * 3 and result.ran == 3
    assert result.best_config == out / "best.yaml" and result.best_config.is_file()
    # no trial starts after the deadline: a timeout that has passed runs nothing
    later = run_study(cfg, space, TuneOptions(str(out), 5, timeout=1e-9))
    assert later.ran == 0 and len(_study(out).trials) == 3


def test_on_epoch_stops_the_training(processed, tmp_path):
    seen = []

    def stop_after_two(epoch: int, row: dict[str, float]) -> bool:
        seen.append((epoch, row["val_session_mean_loss"]))
        return epoch == 2

    cfg = load_config(None, _overrides(processed, tmp_path, training__num_epochs=5))
    result = run_training(cfg, on_epoch=stop_after_two)
    assert [e for e, _ in seen] == [1, 2]
    assert result.epochs_run == 2 and result.stopped_on_epoch and result.stop_requested


def test_a_running_study_is_not_opened_twice(processed, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    lock = StudyLock(out / LOCK)
    lock.exclusive()  # as a running ssr tune holds it
    space = _space(tmp_path / "space.yaml")
    try:
        command = ["tune", "--space", str(space), "--out", str(out)]
        assert main([*command, *_overrides(processed, tmp_path)]) == 2
    finally:
        lock.close()
    assert "another ssr tune is running this study" in capsys.readouterr().err
    assert not (out / "study.db").exists()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"training.learning_rat": {"type": "float", "low": 0.1, "high": 1}},
            r"params.training.learning_rat: not a config key \(did you mean training.learning_rate",
        ),
        (
            {"augmentation.gain_std": {"type": "float", "low": 0, "high": 1}},
            r"params.augmentation.gain_std: not a config key \(did you mean training.augment.gain",
        ),
        (
            {"data.window_size": {"type": "int", "low": 128, "high": 256}},
            r"params.data.window_size: cannot be tuned: the data is preprocessed once",
        ),
        (
            {"training.checkpoint_dir": {"type": "categorical", "choices": ["a", "b"]}},
            r"params.training.checkpoint_dir: cannot be tuned",
        ),
        (
            {"model.dropout": {"type": "float", "low": 0.3, "high": 0.1}},
            r"params.model.dropout: low must be below high",
        ),
        (
            {"model.dropout": {"type": "log", "low": 0, "high": 0.1}},
            r"params.model.dropout: a log scale needs low > 0",
        ),
        (
            {"model.dropout": {"type": "uniform", "low": 0, "high": 0.1}},
            r"params.model.dropout.type: expected one of float, int, log, categorical",
        ),
        (
            {"model.dropout": {"type": "float", "low": 0, "hi": 0.1}},
            r"params.model.dropout: unknown field 'hi' for type float",
        ),
        (
            {"model.dropout": {"type": "float", "low": "0", "high": 0.1}},
            r"params.model.dropout.low: expected a number",
        ),
        (
            {"model.num_layers": {"type": "int", "low": 1, "high": 2.5}},
            r"params.model.num_layers.high: expected an integer",
        ),
        (
            {"model.num_layers": {"type": "int", "low": 1, "high": 4, "step": 2, "log": True}},
            r"params.model.num_layers: step and log cannot be combined",
        ),
        (
            {"model.readout": {"type": "categorical", "choices": ["mean"]}},
            r"params.model.readout.choices: expected a list of at least two",
        ),
        (
            {"model.readout": {"type": "categorical", "choices": ["mean", "mean"]}},
            r"params.model.readout.choices: a value is listed twice",
        ),
        ({"model.dropout": 0.2}, r"params.model.dropout: expected a mapping"),
        ({}, r"params: expected a mapping of config keys"),
    ],
)
def test_a_bad_space_is_one_error_naming_the_key(params, message):
    with pytest.raises(ConfigError, match=f"^space.yaml: {message}"):
        parse_space({"params": params}, "space.yaml")


def test_a_space_is_checked_against_the_config(tmp_path, capsys):
    cfg = load_config(None, ["model.num_heads=8"])
    with pytest.raises(
        ConfigError,
        match=r"s.yaml: params.model.dropout: 1.0 is not a valid value with this config: .*than 1",
    ):
        parse_space(
            {"params": {"model.dropout": {"type": "float", "low": 0, "high": 1}}}, "s.yaml"
        ).check_against(cfg, "s.yaml")
    with pytest.raises(
        ConfigError,
        match=r"params.model.hidden_size: 60 is not a valid value .*divisible by num_heads",
    ):
        parse_space(
            {"params": {"model.hidden_size": {"type": "categorical", "choices": [64, 60]}}},
            "s.yaml",
        ).check_against(cfg, "s.yaml")
    for text, message in [
        ("params: [1, 2]\n", r"params: expected a mapping"),
        ("params:\n  a: 1\n  a: 2\n", r"not valid YAML: .*duplicate key"),
        (
            "pruner: {warmup: 3}\nparams: {model.dropout: {type: float, low: 0, high: 0.5}}\n",
            r"pruner.warmup: unknown key",
        ),
        ("spaces: {}\n", r"spaces: unknown key"),
    ]:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: {message}"):
            load_space(path)
    assert main(["tune", "--space", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: search space file not found" in capsys.readouterr().err
