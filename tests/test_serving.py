"""Serving the champion: the self-contained registered model, `ssr serve` (MLflow's scoring
server) answering real HTTP requests on loopback, safe loading, and `ssr predict` on unlabelled
recordings. Everything runs against the real MLflow + S3 servers of conftest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers_serving import Champion, Impostor, make_champion, save_impostor, server_env
from servers import free_port, stop, wait_http

from ssr.cli import main
from ssr.errors import RegistryError
from ssr.registry import safe_load
from ssr.registry.pyfunc_model import load_pyfunc
from ssr.registry.register import pip_requirements, serving_distributions

pytestmark = pytest.mark.slow  # real MLflow + S3 servers, a registration, a scoring server

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, mlflow_server, s3_server) -> Champion:
    return make_champion(tmp_path_factory.mktemp("serving"), mlflow_server, s3_server)


@pytest.fixture
def registry_env(champion: Champion, mlflow_server, s3_server) -> Iterator[dict[str, str]]:
    with server_env(mlflow_server, s3_server) as env:
        yield env


def _emg(seconds: float, channels: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(seconds * 1000), channels)).astype(np.float32)


# ---- the registered model ------------------------------------------------------------------


def test_registered_model_ships_its_code_and_pins_only_public_packages(
    champion: Champion, registry_env: dict[str, str], tmp_path: Path
) -> None:
    local = Path(mlflow.artifacts.download_artifacts(champion.uri, dst_path=str(tmp_path)))
    requirements = [
        ln.strip()
        for ln in (local / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert requirements == pip_requirements()
    names = [r.split("==")[0].lower() for r in requirements]
    assert names == [n.lower() for n in serving_distributions()]
    assert all("==" in r for r in requirements)
    assert not {"ssr", "ssr-emg", "ssr_emg"} & set(names)  # PyPI's `ssr` is another project
    # every requirement is pinned in constraints.txt, so the serve image installs the same set
    pinned = {
        ln.split("==")[0].lower()
        for ln in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in ln
    }
    assert set(names) <= pinned
    # the code: models-from-code file + the ssr package, no bytecode
    assert (local / safe_load.MODEL_CODE_FILE).read_text() == safe_load.MODEL_CODE
    assert (local / "code/ssr/registry/pyfunc_model.py").is_file()
    assert (local / "code/ssr/registry/serving-requirements.txt").is_file()
    assert not list((local / "code").rglob("*.pyc"))
    meta = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = meta["flavors"]["python_function"]
    assert "python_model" not in pyfunc and pyfunc["loader_module"] == safe_load.CODE_LOADER
    assert meta["signature"]["inputs"] and meta["saved_input_example_info"]
    safe_load.check_model_dir(local)


# ---- the scoring server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    champion: Champion, mlflow_server, s3_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``ssr serve`` of the champion on a free loopback port; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **os.environ,
        **s3_server.env,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "ssr", "serve", "--model", champion.uri, "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout=180, log=log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # passed on to the scoring server
        try:
            proc.wait(30)
        finally:
            stop(proc)
    # uvicorn shuts down cleanly, then exits by the signal it got (143 = 128 + SIGTERM)
    assert proc.returncode in (0, 128 + signal.SIGTERM), log.read_text()[-3000:]
    assert "Application shutdown complete" in log.read_text()


def _post(url: str, body: bytes | str, content_type: str = "application/json") -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        f"{url}/invocations", data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _records(*recordings: np.ndarray, **extra: Any) -> str:
    rows = [{"emg": r.tolist(), **extra} for r in recordings]
    # allow_nan: json writes NaN as the bare token NaN, which hand-written JSON may contain too
    return json.dumps({"dataframe_records": rows}, allow_nan=True)


def test_health_and_version(server: str) -> None:
    for path in ("/health", "/ping", "/version"):
        with urllib.request.urlopen(f"{server}{path}", timeout=30) as response:
            assert response.status == 200


def test_scoring_server_classifies_raw_emg(
    server: str, champion: Champion, registry_env: dict[str, str]
) -> None:
    recording = np.load(champion.test_files()[0])["emg"]
    status, body = _post(server, _records(recording))
    assert status == 200, body
    (row,) = body["predictions"]
    assert set(row) == {"label", "confidence", *(f"p_{lab}" for lab in champion.labels)}
    assert row["label"] in champion.labels
    probs = [row[f"p_{lab}"] for lab in champion.labels]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert row["confidence"] == pytest.approx(max(probs))

    # a batch of recordings of different lengths, in order, equal to in-process predictions
    batch = [np.load(f)["emg"] for f in champion.test_files()[:3]] + [_emg(0.6, seed=1)]
    status, body = _post(server, _records(*batch, sampling_rate=1000))
    assert status == 200, body
    pyfunc, _ = load_pyfunc(champion.uri)
    local = pyfunc.predict(pd.DataFrame({"emg": [b.tolist() for b in batch]}))
    served = pd.DataFrame(body["predictions"])
    assert list(served["label"]) == list(local["label"])
    np.testing.assert_allclose(served["confidence"], local["confidence"], rtol=1e-5)

    # integer samples (ADC counts) as a hand-written payload would have them
    counts = np.rint(recording * 100).astype(int).tolist()
    status, body = _post(server, json.dumps({"dataframe_records": [{"emg": counts}]}))
    assert status == 200 and body["predictions"][0]["label"] in champion.labels, body

    # the logged serving example and the split orientation work as they are
    example = Path(
        mlflow.artifacts.download_artifacts(f"{champion.uri}/serving_input_example.json")
    )
    status, body = _post(server, example.read_bytes())
    assert status == 200 and len(body["predictions"]) >= 1


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (lambda: _records(_emg(1.0, channels=7)), "7 channels, expected 8"),
        (lambda: _records(np.where(np.eye(1000, 8) > 0, np.nan, _emg(1.0))), "NaN"),
        (lambda: "this is not json", "valid JSON"),
        (lambda: _records(_emg(0.1)), "shorter than one window"),
        (lambda: _records(_emg(20.0)), "max_frames=64"),
        (lambda: _records(_emg(1.0), sampling_rate=500), "model expects 1000 Hz"),
        (lambda: _records(_emg(1.0), _emg(1.0, channels=9)), "row 1: 9 channels"),
        (lambda: json.dumps({"dataframe_records": [{"signal": [[0.5] * 8] * 300}]}), "emg"),
        (lambda: json.dumps({"dataframe_records": [{"emg": "0.1, 0.2"}]}), "emg"),
        (
            lambda: json.dumps({"dataframe_records": [{"emg": [[0.1] * 8] * 300 + [[0.1] * 7]}]}),
            "row 0: emg is not a numeric (time, channels) array",
        ),
    ],
    ids=[
        "wrong-channels",
        "nan",
        "not-json",
        "too-short",
        "too-long",
        "wrong-rate",
        "bad-second-row",
        "no-emg",
        "emg-a-string",
        "ragged",
    ],
)
def test_malformed_payloads_get_400_with_the_reason(server: str, payload, expected: str) -> None:
    status, body = _post(server, payload())
    assert status == 400, body
    assert expected in body["message"], body["message"][-500:]


# ---- safe loading --------------------------------------------------------------------------


def test_a_pickled_model_is_refused_and_its_payload_never_runs(
    champion: Champion, registry_env: dict[str, str], tmp_path: Path, capsys
) -> None:
    marker = tmp_path / "payload-ran"
    model_dir = save_impostor(tmp_path / "impostor", marker)
    recording = str(champion.test_files()[0])

    assert main(["predict", "--model", str(model_dir), recording]) == 2
    assert "pickle" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_dir), "--port", str(free_port())]) == 2
    assert "pickle" in capsys.readouterr().err
    with pytest.raises(RegistryError, match="pickle"):
        load_pyfunc(str(model_dir))

    # the same pickle registered on the server: refused from models:/ (only MLmodel fetched)
    name = f"{champion.name}-impostor"
    with mlflow.start_run():
        logged = mlflow.pyfunc.log_model(
            name="model", python_model=Impostor(marker), pip_requirements=[]
        )
    version = mlflow.register_model(logged.model_uri, name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    assert main(["predict", "--model", f"models:/{name}@champion", recording]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not marker.exists()

    # control: MLflow itself, unguarded, does run the payload
    code = (
        "import sys, mlflow.pyfunc\n"
        "try:\n    mlflow.pyfunc.load_model(sys.argv[1])\nexcept Exception:\n    pass\n"
    )
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    subprocess.run([sys.executable, "-c", code, str(model_dir)], env=env, timeout=120, check=True)
    assert marker.exists()


def _copy_model(champion: Champion, tmp_path: Path) -> Path:
    return Path(mlflow.artifacts.download_artifacts(champion.uri, dst_path=str(tmp_path / "m")))


def test_models_not_logged_by_ssr_are_refused(
    champion: Champion, registry_env: dict[str, str], tmp_path: Path
) -> None:
    local = _copy_model(champion, tmp_path)
    safe_load.check_model_dir(local)
    code = local / safe_load.MODEL_CODE_FILE
    code.write_text(safe_load.MODEL_CODE + "import os\n")
    with pytest.raises(RegistryError, match="model code differs"):
        load_pyfunc(str(local))
    code.write_text(safe_load.MODEL_CODE)
    meta_path = local / "MLmodel"
    original = meta_path.read_text()

    def refused(edit, match: str) -> None:
        meta = yaml.safe_load(original)
        edit(meta)
        meta_path.write_text(yaml.safe_dump(meta))
        with pytest.raises(RegistryError, match=match):
            safe_load.check_model_dir(local)

    refused(lambda m: m["flavors"].update(pytorch={"model_data": "data"}), "flavours")
    pf = "python_function"
    refused(lambda m: m["flavors"][pf].update(loader_module="mlflow.sklearn"), "loader_module")
    refused(lambda m: m["flavors"][pf].pop("model_code_path"), "no model_code_path")
    refused(lambda m: m["flavors"][pf].update(model_code_path="/x/evil.py"), "'evil.py'")
    refused(
        lambda m: m["flavors"][pf]["artifacts"]["weights"].update(path="../../etc/passwd"),
        "outside the model",
    )
    refused(lambda m: m["flavors"][pf]["artifacts"].pop("manifest"), "missing")
    meta_path.write_text("flavors: [")
    with pytest.raises(RegistryError, match="unreadable MLmodel"):
        safe_load.check_model_dir(local)
    meta_path.unlink()
    with pytest.raises(RegistryError, match="no MLmodel"):
        safe_load.check_model_dir(local)
    with pytest.raises(RegistryError, match="not found|cannot"):
        load_pyfunc(f"models:/{champion.name}@no-such-alias")


# ---- ssr predict ---------------------------------------------------------------------------


def _write_inputs(champion: Champion, folder: Path) -> dict[str, Path]:
    """The same recording in every format `ssr predict` reads, with and without its label."""
    source = champion.test_files()[0]
    with np.load(source) as npz:
        emg, label = npz["emg"], str(npz["label"])
    folder.mkdir()
    files = {
        "native": folder / "native.npz",
        "emg_only": folder / "emg_only.npz",
        "labelled": folder / "labelled.npz",
        "gaddy": folder / "session1" / "4_emg.npy",
        "gaddy_bare": folder / "session2" / "5_emg.npy",
        "plain": folder / "plain.npy",
    }
    np.savez(files["native"], emg=emg, sampling_rate=np.array(1000.0))
    np.savez(files["emg_only"], emg=emg)
    np.savez(files["labelled"], emg=emg, sampling_rate=np.array(1000.0), label=np.array(label))
    for key in ("gaddy", "gaddy_bare"):
        files[key].parent.mkdir()
        np.save(files[key], emg)
    (files["gaddy"].parent / "4_info.json").write_text(
        json.dumps({"text": label, "sentence_index": 3, "book": ""})
    )
    np.save(files["plain"], emg)
    return {**files, "label": label}  # type: ignore[dict-item]


def test_predict_classifies_unlabelled_recordings_and_shows_known_labels(
    champion: Champion, registry_env: dict[str, str], tmp_path: Path, capsys
) -> None:
    files = _write_inputs(champion, tmp_path / "in")
    label = str(files.pop("label"))
    paths = [str(p) for p in files.values()]
    assert main(["predict", "--model", champion.uri, "--json", *paths]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == paths
    truth = {Path(r["file"]).name: r["true_label"] for r in rows}
    assert truth == {
        "native.npz": None,
        "emg_only.npz": None,
        "labelled.npz": label,
        "4_emg.npy": label,
        "5_emg.npy": None,
        "plain.npy": None,
    }
    # one recording, one answer, whatever the file format
    assert len({r["label"] for r in rows}) == 1
    assert len({round(r["confidence"], 5) for r in rows}) == 1

    assert main(["predict", "--model", champion.uri, *paths]) == 0
    out = capsys.readouterr().out
    assert "true label" in out.splitlines()[0]
    assert "/2 labelled recordings classified correctly" in out
    assert main(["predict", "--model", champion.uri, paths[0]]) == 0
    assert "true label" not in capsys.readouterr().out


def test_predict_errors_name_the_file(
    champion: Champion, registry_env: dict[str, str], tmp_path: Path, capsys
) -> None:
    bad = {
        "long.npz": ({"emg": _emg(20.0), "sampling_rate": np.array(1000.0)}, "max_frames=64"),
        "six.npy": (_emg(1.0, channels=6), "6 channels, expected 8"),
        "rate.npz": ({"emg": _emg(1.0), "sampling_rate": np.array(500.0)}, "expects 1000 Hz"),
        "nan.npy": (np.full((900, 8), np.nan, np.float32), "NaN"),
        "short.npy": (_emg(0.1), "shorter than one window"),
        "text.npy": (np.array(["a", "b"]), "real numbers"),
        "nolabel.npz": ({"signal": _emg(1.0)}, "no 'emg' array"),
        "junk.npz": (b"not a zip", "not a .npz"),
        "notes.txt": (b"hello", "unsupported file type"),
    }
    for name, (content, expected) in bad.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, dict):
            np.savez(path, **content)
        else:
            np.save(path, content)
        assert main(["predict", "--model", champion.uri, str(path)]) == 2, name
        err = capsys.readouterr().err
        assert str(path) in err and expected in err, err
    for missing in (tmp_path / "missing.npz", tmp_path):
        assert main(["predict", "--model", champion.uri, str(missing)]) == 2
        assert str(missing) in capsys.readouterr().err
