"""A registered ``task: sentences`` model: it carries its lexicon, language model and decoding
settings, answers raw EMG with transcripts in process (the checked load path), through
`ssr predict` and over HTTP behind `ssr serve`, and gives the gate its test-split transcripts.
Real MLflow + S3 servers (conftest); a tiny untrained ctc_transformer, evaluated and
registered as `ssr evaluate` and `ssr register` do, is enough for the plumbing (decoding itself
is tested in test_sentence_decoding.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers_serving import server_env
from mlflow.tracking import MlflowClient
from servers import free_port, stop, wait_http

from ssr.cli import main
from ssr.config import Config, load_config
from ssr.data.formats import read_native
from ssr.data.preprocess import run_preprocess
from ssr.data.processed import ProcessedSplit
from ssr.data.synth_sentences import SentenceOptions, generate_sentences
from ssr.errors import RegistryError
from ssr.evaluation import evaluate
from ssr.model import build_model
from ssr.registry import safe_load
from ssr.registry.packaging import pip_requirements
from ssr.registry.pyfunc_model import load_pyfunc, transcripts_on_test_split
from ssr.registry.register import register_model
from ssr.sentences.lm import build_language_model
from ssr.training.checkpoint import feature_state, save_checkpoint

pytestmark = pytest.mark.slow  # real MLflow + S3 servers, a registration, a scoring server

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["text", "confidence", "greedy_text"]
TINY = [
    "model.hidden_size=16",
    "model.num_heads=2",
    "model.num_layers=1",
    "model.dropout=0.0",
    "decoding.lm_order=2",
    "decoding.beam_size=8",
    "tracking.mlflow.experiment=sentence-serving-tests",
    "registry.log_pytorch_model=false",
]


@dataclass
class SentenceModel:
    """A registered sentence model (alias ``champion``) and the data it was made from."""

    name: str
    version: str
    root: Path
    cfg: Config
    lexicon: set[str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@champion"

    def test_files(self) -> list[Path]:
        return sorted((self.root / "raw" / "test").rglob("*.npz"))


def _config(root: Path, *extra: str) -> Config:
    raw = root / "raw"
    return load_config(
        REPO / "configs" / "sentences_small.yaml",
        [
            f"data.train_dir={raw / 'train'}",
            f"data.val_dir={raw / 'val'}",
            f"data.test_dir={raw / 'test'}",
            f"data.processed_dir={root / 'processed'}",
            *TINY,
            *extra,
        ],
    )


def _checkpoint(cfg: Config, out: Path) -> tuple[str, set[str]]:
    """An untrained ctc_transformer checkpoint with the language model of the training
    transcripts, as the trainer writes one; its lexicon."""
    train = ProcessedSplit(cfg.data.processed_dir, "train")
    torch.manual_seed(0)
    model = build_model(cfg.model, len(train.label_names))
    lm = build_language_model(train.texts, cfg.decoding.lm_order)
    state = {
        "model": model.state_dict(),
        "config": cfg.model_dump(),
        "labels": train.label_names,
        "language_model": lm.to_state(),
        **feature_state(train.manifest),
    }
    return save_checkpoint(state, str(out), "sentences.pth"), set(lm.words)


def _register(cfg: Config, checkpoint: str, root: Path) -> str:
    """Evaluate ``checkpoint`` on the test split and register it (`ssr register`'s path, the
    linear baseline skipped); alias the version ``champion``."""
    eval_dir = root / "eval"
    evaluate(
        checkpoint, "test", cfg.data.processed_dir, str(eval_dir), device="cpu", baseline=False
    )
    info = register_model(cfg, checkpoint, str(eval_dir))
    MlflowClient().set_registered_model_alias(info.name, "champion", info.version)
    return info.version


@pytest.fixture(scope="module")
def sentence_model(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server, s3_server
) -> SentenceModel:
    root = tmp_path_factory.mktemp("sentences")
    generate_sentences(
        root / "raw",
        SentenceOptions(
            sentences=4, sessions=3, train_sessions=1, lm_sentences=10, unseen_words=0.0,
            open_share=0.0,
        ),
    )  # fmt: skip
    name = f"ssr-sentences-{uuid.uuid4().hex[:8]}"
    cfg = _config(root, f"registry.model_name={name}")
    run_preprocess(cfg)
    checkpoint, lexicon = _checkpoint(cfg, root / "ckpt")
    with server_env(mlflow_server, s3_server):
        version = _register(cfg, checkpoint, root)
    return SentenceModel(name, version, root, cfg, lexicon)


@pytest.fixture
def registry_env(
    sentence_model: SentenceModel, mlflow_server, s3_server
) -> Iterator[dict[str, str]]:
    with server_env(mlflow_server, s3_server) as env:
        yield env


def _emg(seconds: float, channels: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(seconds * 1000), channels)).astype(np.float32)


def _in_lexicon(texts: list[str], lexicon: set[str]) -> bool:
    return all(word in lexicon for text in texts for word in text.split())


# ---- the registered model ------------------------------------------------------------------


def test_the_registered_model_carries_lexicon_language_model_and_decoding(
    sentence_model: SentenceModel, registry_env: dict[str, str], tmp_path: Path
) -> None:
    local = Path(mlflow.artifacts.download_artifacts(sentence_model.uri, dst_path=str(tmp_path)))
    safe_load.check_model_dir(local)
    meta = yaml.safe_load((local / "MLmodel").read_text())
    artifacts = meta["flavors"]["python_function"]["artifacts"]
    assert {"language_model", "lexicon", "decoding", *safe_load.ARTIFACT_KEYS} <= set(artifacts)
    words = (local / artifacts["lexicon"]["path"]).read_text().split()
    assert set(words) == sentence_model.lexicon
    assert (local / artifacts["language_model"]["path"]).read_text().startswith("\\data\\")
    info = json.loads((local / artifacts["decoding"]["path"]).read_text())
    assert info["task"] == "sentences" and info["lm_order"] == 2
    assert info["decoding"]["beam_size"] == 8
    # flashlight-text travels in the pinned requirements; nothing pickled
    requirements = (local / "requirements.txt").read_text().split()
    assert requirements == pip_requirements()
    assert any(r.startswith("flashlight-text==") for r in requirements)
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))
    outputs = [col["name"] for col in json.loads(meta["signature"]["outputs"])]
    assert outputs == COLUMNS
    inputs = {col["name"]: col for col in json.loads(meta["signature"]["inputs"])}
    assert inputs["emg"]["type"] == "array" and inputs["sampling_rate"]["required"] is False
    example = json.loads((local / "serving_input_example.json").read_text())
    emg_column = example["dataframe_split"]["columns"].index("emg")
    lengths = [len(row[emg_column]) for row in example["dataframe_split"]["data"]]
    assert len(set(lengths)) == len(lengths) > 1  # variable-length recordings


def test_predict_on_raw_emg_returns_transcripts_from_the_lexicon(
    sentence_model: SentenceModel, registry_env: dict[str, str]
) -> None:
    pyfunc, inner = load_pyfunc(sentence_model.uri)  # the checked path
    assert inner.task == "sentences"
    recordings = [read_native(f).emg for f in sentence_model.test_files()]
    out = pyfunc.predict(pd.DataFrame({"emg": [r.tolist() for r in recordings]}))
    assert list(out.columns) == COLUMNS and len(out) == len(recordings)
    assert out["confidence"].between(0.0, 1.0).all()
    assert all(isinstance(t, str) for t in out["text"])
    assert _in_lexicon(list(out["text"]), sentence_model.lexicon)
    assert set("".join(out["greedy_text"])) <= set(inner.labels[1:])
    # one row at a time gives the same answers (batching and padding change nothing)
    single = pyfunc.predict(pd.DataFrame({"emg": [recordings[1]]}))
    assert single["text"][0] == out["text"][1]
    assert single["greedy_text"][0] == out["greedy_text"][1]
    # input the model cannot use is refused naming the row, as for word models
    with pytest.raises(Exception, match="row 0: 7 channels, expected 8"):
        pyfunc.predict(pd.DataFrame({"emg": [_emg(1.0, channels=7)]}))


def test_transcripts_on_test_split_one_per_utterance_from_features_or_raw(
    sentence_model: SentenceModel, registry_env: dict[str, str], tmp_path: Path
) -> None:
    cfg = sentence_model.cfg
    split = ProcessedSplit(cfg.data.processed_dir, "test")
    fingerprint = str(split.manifest["fingerprint"])
    stored = transcripts_on_test_split(
        sentence_model.uri, cfg.data.processed_dir, cfg.data.test_dir, fingerprint
    )
    assert len(stored) == len(split) and all(isinstance(t, str) for t in stored)
    assert _in_lexicon(stored, sentence_model.lexicon)
    pyfunc, _ = load_pyfunc(sentence_model.uri)
    raw = [read_native(source).emg for source in split.ids]
    assert stored == list(pyfunc.predict(pd.DataFrame({"emg": raw}))["text"])
    # another preprocessing: the model featurises the raw recordings itself, same answers
    other = cfg.model_copy(deep=True)
    other.data.processed_dir = str(tmp_path / "hop12")
    other.data.hop_length = 12
    run_preprocess(other)
    assert transcripts_on_test_split(sentence_model.uri, tmp_path / "hop12", cfg.data.test_dir) == (
        stored
    )
    with pytest.raises(RegistryError, match="fingerprint"):
        transcripts_on_test_split(sentence_model.uri, cfg.data.processed_dir, "x", "0" * 64)


# ---- ssr predict ---------------------------------------------------------------------------


def test_ssr_predict_prints_one_transcript_per_recording(
    sentence_model: SentenceModel, registry_env: dict[str, str], tmp_path: Path, capsys
) -> None:
    labelled = sentence_model.test_files()[0]
    with np.load(labelled) as npz:
        emg, sentence = npz["emg"], str(npz["label"])
    bare = tmp_path / "bare.npy"
    np.save(bare, emg)
    paths = [str(labelled), str(bare)]
    assert main(["predict", "--model", sentence_model.uri, *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f'{labelled}: "') and f'reference: "{sentence}"' in lines[0]
    assert lines[1].startswith(f'{bare}: "') and "reference" not in lines[1]
    assert lines[2].startswith("WER ") and "over 1 labelled recording" in lines[2]
    assert lines[0].split("  reference")[0] == lines[1].replace(str(bare), str(labelled))

    assert main(["predict", "--model", sentence_model.uri, "--json", *paths]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == paths
    assert [set(r) for r in rows] == [{"file", *COLUMNS, "true_text"}] * 2
    assert [r["true_text"] for r in rows] == [sentence, None]
    assert rows[0]["text"] == rows[1]["text"] and 0.0 <= rows[0]["confidence"] <= 1.0
    assert _in_lexicon([r["text"] for r in rows], sentence_model.lexicon)


# ---- the scoring server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    sentence_model: SentenceModel, mlflow_server, s3_server, tmp_path_factory
) -> Iterator[str]:
    """``ssr serve`` of the sentence model on a free loopback port; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-sentences") / "serve.log"
    env = {
        **os.environ,
        **s3_server.env,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "ssr", "serve", "--model", sentence_model.uri]
    cmd += ["--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, timeout=180, log=log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            stop(proc)


def _post(url: str, body: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_scoring_server_answers_with_transcripts(
    server: str, sentence_model: SentenceModel, registry_env: dict[str, str]
) -> None:
    recordings = [read_native(f).emg for f in sentence_model.test_files()[:2]]
    recordings.append(_emg(0.7, seed=3))  # an unlabelled one, shorter
    rows = [{"emg": r.tolist(), "sampling_rate": 1000} for r in recordings]
    status, body = _post(server, json.dumps({"dataframe_records": rows}))
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert list(served.columns) == COLUMNS and len(served) == 3
    pyfunc, _ = load_pyfunc(sentence_model.uri)
    local = pyfunc.predict(pd.DataFrame({"emg": [r.tolist() for r in recordings]}))
    assert list(served["text"]) == list(local["text"])
    assert list(served["greedy_text"]) == list(local["greedy_text"])
    np.testing.assert_allclose(served["confidence"], local["confidence"], rtol=1e-5)
    assert _in_lexicon(list(served["text"]), sentence_model.lexicon)

    # the logged serving example works as it is
    example = Path(
        mlflow.artifacts.download_artifacts(f"{sentence_model.uri}/serving_input_example.json")
    )
    status, body = _post(server, example.read_text())
    assert status == 200 and set(body["predictions"][0]) == set(COLUMNS), body

    status, body = _post(server, json.dumps({"dataframe_records": [{"emg": [[0.1] * 7] * 500}]}))
    assert status == 400 and "7 channels, expected 8" in body["message"], body
