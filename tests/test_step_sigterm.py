"""SIGTERM reaches the pipeline's train step however it is sent, and the step checkpoints.

The train step runs exactly as the compiled pipeline YAML says: its ``sh -ec`` wrapper (which
does not ``exec`` python) around ``kfp.dsl.executor_main``, with DataLoader workers. SIGTERM is
sent to the python process, to the shell only, and to the whole process group (what Argo's
emissary does in a pod). Each time the step must exit 143 without a traceback after saving a
checkpoint that a second run of the same command line resumes from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_data import make_processed

from ssr.storage import read_pointer
from ssr.training.checkpoint import load_checkpoint

RUN_ID = "run-sigterm"
CONFIG = {  # a tiny model that trains for a long time unless stopped
    "model": {
        "input_size": 8,
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "dropout": 0.1,
        "max_frames": 64,
    },
    "training": {
        "batch_size": 4,
        "num_workers": 2,
        "log_interval": 1,
        "viz_interval": 1000,
        "save_interval": 1000,
        "patience": 1000,
        "device": "cpu",
    },
    "tracking": {"mlflow": {"enabled": False}, "wandb": {"enabled": False}},
}


@pytest.fixture(scope="module")
def train_command(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The train executor's command and args from the compiled pipeline YAML."""
    from kfp import compiler

    from pipelines.training_pipeline import training_pipeline

    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    compiler.Compiler().compile(training_pipeline, str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    found = [
        e["container"]
        for e in spec["deploymentSpec"]["executors"].values()
        if "container" in e
        and "--function_to_execute" in e["container"].get("args", [])
        and e["container"]["args"][e["container"]["args"].index("--function_to_execute") + 1]
        == "train"
    ]
    assert found, "no executor runs the train function"
    container = found[0]
    assert container["command"][:2] == ["sh", "-ec"]
    return [*container["command"], *container["args"]]


def _executor_input(artifact: Path, work: Path, epochs: int) -> dict[str, Any]:
    def artifact_list(name: str, schema: str, uri: Path) -> dict[str, Any]:
        kind = {"schemaTitle": schema, "schemaVersion": "0.0.1"}
        return {"artifacts": [{"name": name, "type": kind, "uri": str(uri), "metadata": {}}]}

    return {
        "inputs": {
            "parameterValues": {
                "checkpoint_root": str(work / "checkpoints"),
                "run_id": RUN_ID,
                "config_yaml": yaml.safe_dump(CONFIG),
                "overrides": [f"training.output_dir={work / 'outputs'}"],
                "epochs": epochs,
            },
            "artifacts": {"processed": artifact_list("processed", "system.Dataset", artifact)},
        },
        "outputs": {
            "parameters": {"best_val_loss": {"outputFile": str(work / "out" / "best_val_loss")}},
            "artifacts": {"model": artifact_list("model", "system.Model", work / "out" / "model")},
            "outputFile": str(work / "out" / "executor_output.json"),
        },
    }


def _start(command: list[str], executor_input: dict[str, Any], log: Path) -> subprocess.Popen:
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in command]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        # `python3` in the command must be this interpreter, as it is the image's in a pod
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    with log.open("w") as out:  # a file, not a pipe: nobody has to drain it while we wait
        return subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _python_pid(shell: int, timeout: float = 60) -> int:
    """The shell's child running ``python3 -m kfp.dsl.executor_main``. Matched on a whole
    argument: a child forked for ``$(mktemp -d)`` carries the shell's own command line (the
    script, which mentions the module) until it execs, and is gone a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for kid in _children(shell):
            try:
                args = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"kfp.dsl.executor_main" in args:
                return kid
        time.sleep(0.2)
    raise AssertionError("the executor's python process never started")


def _wait_for_epoch(checkpoints: str, log: Path, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read_pointer(checkpoints)
        if found and found[0].epoch >= 1:
            return found[0].global_step
        time.sleep(0.3)
    raise AssertionError(f"no checkpoint after {timeout} s:\n{log.read_text()[-3000:]}")


def _wait_exit(pid: int, timeout: float = 180) -> None:
    """Wait for a process that is not our child (the orphaned python after its shell died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"process {pid} still running {timeout} s after SIGTERM")


@pytest.mark.parametrize("target", ["python", "shell", "group"])
def test_train_step_checkpoints_on_sigterm(
    train_command: list[str], tmp_path: Path, target: str
) -> None:
    artifact = tmp_path / "dataset"
    make_processed(artifact / "processed", per_class=16)
    work = tmp_path / "work"
    checkpoints = str(work / "checkpoints" / RUN_ID)
    log = tmp_path / "step.log"
    shell = _start(train_command, _executor_input(artifact, work, epochs=1000), log)
    try:
        python = _python_pid(shell.pid)
        assert python != shell.pid  # dash does not exec the last command: two processes
        step_before = _wait_for_epoch(checkpoints, log)
        if target == "python":
            os.kill(python, signal.SIGTERM)
        elif target == "shell":
            os.kill(shell.pid, signal.SIGTERM)
        else:
            os.killpg(shell.pid, signal.SIGTERM)
        code = shell.wait(timeout=180)
        _wait_exit(python)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
    output = log.read_text()
    if target == "python":  # the shell passes on python's exit status (sh -e)
        assert code == 143, output[-3000:]
    else:  # the shell itself died of the signal
        assert code == -signal.SIGTERM, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "stopped on SIGTERM after saving a checkpoint" in output, output[-3000:]
    pointer = read_pointer(checkpoints)
    assert pointer is not None
    state = load_checkpoint(str(Path(checkpoints) / pointer[0].checkpoint))
    assert state["global_step"] > step_before  # saved at the stop, not the epoch before

    # the retry: the same command line resumes there and finishes the next epoch
    resumed_epochs = int(state["epoch"]) + 1
    log2 = tmp_path / "retry.log"
    retry = _start(train_command, _executor_input(artifact, work, epochs=resumed_epochs), log2)
    assert retry.wait(timeout=240) == 0, log2.read_text()[-3000:]
    assert "resumed from" in log2.read_text()
    assert (work / "out" / "model").is_file()
