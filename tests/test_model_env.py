"""The registered model installs, loads and answers anywhere: in a fresh virtualenv that holds
only what the model's requirements list (this project is not installed there), it is loaded
from a real ``mlflow server`` as ``models:/<name>@champion``, predicts on raw EMG, and MLflow's
own ``mlflow models serve`` answers an HTTP request with it.

Slow (minutes): the virtualenv is built from the package index (torch from the local wheel
cache when pip is configured with one), pinned by constraints.txt.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
from helpers_serving import make_champion, server_env
from servers import free_port, wait_http

from ssr.registry.register import serving_distributions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[1]
PREDICT = """\
import json, sys
import numpy as np, pandas as pd, mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
emg = np.load(sys.argv[2])["emg"]
out = model.predict(pd.DataFrame({"emg": [emg.tolist(), emg[: len(emg) // 2].tolist()]}))
import ssr
print(json.dumps({"rows": out.to_dict(orient="records"), "ssr": ssr.__file__}))
"""


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert out.returncode == 0, f"{cmd[:4]} exited {out.returncode}:\n{out.stderr[-4000:]}"
    return out


def test_champion_installs_loads_and_serves_in_a_fresh_virtualenv(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server, s3_server
) -> None:
    champion = make_champion(tmp_path_factory.mktemp("model-env"), mlflow_server, s3_server)
    work = tmp_path_factory.mktemp("fresh")  # a neutral folder: no ./ssr to import from
    with server_env(mlflow_server, s3_server):
        requirements = Path(mlflow.pyfunc.get_model_dependencies(champion.uri))
    listed = [ln.split("==")[0].lower() for ln in requirements.read_text().split()]
    assert listed == [n.lower() for n in serving_distributions()]

    # only the registry's address: no object-storage keys, no PYTHONPATH, not this venv
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MLFLOW_", "PYTHON", "VIRTUAL_ENV"))
    }
    env |= {"MLFLOW_TRACKING_URI": mlflow_server.uri, "OMP_NUM_THREADS": "1"}
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    python, bindir = venv / "bin" / "python", venv / "bin"
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    install += ["-c", str(REPO / "constraints.txt"), "-r", str(requirements)]
    run(install, env=env, cwd=work, timeout=1800)

    # nothing of this project is installed there
    listing = run([str(python), "-m", "pip", "list", "--format=json"], env=env, cwd=work)
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listing.stdout)}
    assert not {"ssr", "ssr-emg"} & installed
    assert {n.lower() for n in listed} <= installed
    probe = subprocess.run([str(python), "-c", "import ssr"], env=env, cwd=work, check=False)
    assert probe.returncode != 0, "ssr importable before the model is loaded"

    # load models:/...@champion from the server and predict on raw EMG
    recording = champion.test_files()[0]
    out = run(
        [str(python), "-c", PREDICT, champion.uri, str(recording)], env=env, cwd=work, timeout=600
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = result["rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["label"] in champion.labels
        probs = [row[f"p_{lab}"] for lab in champion.labels]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    # the ssr code came with the model, not from this checkout
    assert f"{os.sep}code{os.sep}ssr{os.sep}" in result["ssr"]
    assert not Path(result["ssr"]).resolve().is_relative_to(REPO)

    # and MLflow's stock scoring server serves it from that environment
    port = free_port()
    log = work / "serve.log"
    cmd = [str(bindir / "mlflow"), "models", "serve", "-m", champion.uri]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as sink:
        # its own process group: mlflow models serve starts uvicorn as a child
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=300, log=log)
        emg = np.load(recording)["emg"]
        body = json.dumps({"dataframe_records": [{"emg": emg.tolist()}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        assert predictions[0]["label"] in champion.labels
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
