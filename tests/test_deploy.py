"""``ssr deploy``: the InferenceService rolled to the champion by a canary, against the KServe
stand-in (tests/kserve_standin.py), the real MLflow server of conftest and a real ``ssr serve``
of a registered model behind the canary's URL (or a server that fails the smoke test)."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers_serving import Champion, make_champion, server_env
from kserve_standin import StandIn, start_standin
from mlflow.tracking import MlflowClient
from servers import free_port, stop, wait_http

from ssr.cli import main
from ssr.cluster import canary as canary_module
from ssr.cluster import inference_service as isvc
from ssr.cluster.crd_schema import SchemaError
from ssr.cluster.smoke import SmokeTestError, UnreachableError, check_health, check_predictions
from ssr.commands import deploy as deploy_command
from ssr.steps import deploy as deploy_step_module
from ssr.steps.deploy import deploy_step

pytestmark = pytest.mark.slow  # real MLflow + S3 servers, a registration, a scoring server

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "team-emg"
NAME = "ssr-emg"
MANIFEST = yaml.safe_load((REPO / "k8s" / "kserve" / "inferenceservice.yaml").read_text())
FAST = ["--poll", "0.01", "--timeout", "10", "--smoke-count", "3"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, mlflow_server, s3_server) -> Champion:
    return make_champion(tmp_path_factory.mktemp("deploy"), mlflow_server, s3_server, steps=5)


@pytest.fixture(scope="module")
def serve_url(base: Champion, mlflow_server, s3_server, tmp_path_factory) -> Iterator[str]:
    """``ssr serve`` of the registered model: the healthy canary."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, **s3_server.env, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    env |= {"MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint, "OMP_NUM_THREADS": "1"}
    uri = f"models:/{base.name}/{base.version}"
    cmd = [sys.executable, "-m", "ssr", "serve", "--model", uri, "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=180, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            stop(proc)


class Broken(BaseHTTPRequestHandler):
    """A canary that is up (/health 200) but cannot predict (500)."""

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(200, b"{}")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(500, b'{"error_code": "INTERNAL_ERROR", "message": "weights do not load"}')


@pytest.fixture(scope="module")
def broken_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StandIn]:
    state, server = start_standin()
    yield state
    server.shutdown()


def set_champions(client: MlflowClient, name: str, history: list[str]) -> None:
    """The registry's champion history (oldest first) and aliases, as ssr promote keeps them."""
    client.set_registered_model_tag(name, "champion_history", json.dumps(history))
    client.set_registered_model_alias(name, "champion", history[-1])
    if len(history) > 1:
        client.set_registered_model_alias(name, "previous-champion", history[-2])


@pytest.fixture
def cluster(
    standin_server: StandIn,
    base: Champion,
    serve_url: str,
    mlflow_server,
    s3_server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, Any]]:
    """The stand-in serving the manifest's InferenceService (its first revision rolled out), a
    registered model with versions 1 and 2 (copies of ``base``), champion 1, the clients
    pointed at both."""
    standin_server.reset()
    standin_server.default_backend = serve_url
    monkeypatch.setenv("KUBECONFIG", str(standin_server.kubeconfig(tmp_path / "kc", NAMESPACE)))
    monkeypatch.delenv("SSR_NAMESPACE", raising=False)
    monkeypatch.setenv("SSR_DEPLOY_POLL_SECONDS", "0.01")  # the pipeline step's polls too
    monkeypatch.setattr(isvc, "TOKEN_FILE", str(tmp_path / "no-token"))
    manifest = copy.deepcopy(MANIFEST)
    manifest["metadata"]["namespace"] = NAMESPACE
    with server_env(mlflow_server, s3_server):
        client = MlflowClient()
        name = f"ssr-deploy-{uuid.uuid4().hex[:8]}"
        for _ in range(2):
            client.copy_model_version(f"models:/{base.name}/{base.version}", name)
        set_champions(client, name, ["1"])
        yield {
            "standin": standin_server,
            "client": client,
            "name": name,
            "manifest": standin_server.apply(manifest),
            "test_dir": str(base.root / "raw" / "test"),
        }


def deploy(cluster: dict[str, Any], *extra: str) -> int:
    args = ["deploy", "--model-name", cluster["name"], "--test-dir", cluster["test_dir"]]
    return main([*args, *FAST, *extra])


def stored(cluster: dict[str, Any]) -> dict[str, Any]:
    return cluster["standin"].objects[(NAMESPACE, NAME)]


def puts(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [r[2]["body"] for r in cluster["standin"].requests if r[0] == "PUT"]


def tag(cluster: dict[str, Any], version: str, key: str) -> str | None:
    return cluster["client"].get_model_version(cluster["name"], version).tags.get(key)


def uri(cluster: dict[str, Any], version: str) -> str:
    return f"models:/{cluster['name']}/{version}"


def test_canary_body_then_promotion_then_nothing_twice(cluster, capsys) -> None:
    standin = cluster["standin"]
    standin.conflicts = 1  # a concurrent write before the first PUT: read again, redo
    assert deploy(cluster) == 0
    assert f"promoted: InferenceService {NAMESPACE}/{NAME} serves {uri(cluster, '1')}" in (
        capsys.readouterr().out
    )
    requests = [r for r in standin.requests if r[0] == "PUT"]
    assert all(r[2]["query"] == {"fieldValidation": "Strict"} for r in requests)
    canary, promotion = puts(cluster)[1:]  # the first PUT met the conflict
    # the canary: the applied object with the pinned model, its version, what it replaces
    expected = copy.deepcopy(cluster["manifest"])
    expected.pop("status")
    expected["metadata"]["annotations"] |= {
        "ssr.io/model-version": "1",
        "ssr.io/previous-model-uri": "models:/ssr-emg@champion",
        "ssr.io/replaces-revision": "ssr-emg-predictor-00001",
    }
    expected["spec"]["predictor"]["canaryTrafficPercent"] = 10
    env = expected["spec"]["predictor"]["containers"][0]["env"]
    env[0] = {"name": "SSR_MODEL_URI", "value": uri(cluster, "1")}
    for body in (canary, expected):
        assert body["metadata"].pop("resourceVersion")
    assert canary == expected
    # the promotion changes nothing but the traffic (no new revision)
    assert "canaryTrafficPercent" not in promotion["spec"]["predictor"]
    assert promotion["metadata"]["annotations"] == canary["metadata"]["annotations"]
    obj = stored(cluster)
    assert isvc.model_uri(obj) == uri(cluster, "1") and isvc.canary_percent(obj) is None
    assert [r.name for r in standin.revisions[(NAMESPACE, NAME)]][-1] == "ssr-emg-predictor-00002"
    assert tag(cluster, "1", "deploy.status") == "promoted"
    assert "predictions" in tag(cluster, "1", "deploy.reason")
    # a retry finds the champion served at 100 %: no write at all
    writes = len(standin.writes())
    assert deploy(cluster) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(standin.writes()) == writes


def test_failing_smoke_test_rolls_back_server_and_registry(cluster, broken_url, capsys) -> None:
    standin, client, name = cluster["standin"], cluster["client"], cluster["name"]
    assert deploy(cluster) == 0
    set_champions(client, name, ["1", "2"])
    standin.backends[uri(cluster, "2")] = broken_url
    before = len(puts(cluster))
    assert deploy(cluster, "--version", "2") == deploy_command.ROLLED_BACK
    out = capsys.readouterr().out
    assert f"rolled back: {uri(cluster, '2')} failed its canary" in out
    assert f"serves {uri(cluster, '1')} again" in out and "HTTP 500" in out
    steps = [
        (isvc.model_uri(b), isvc.canary_percent(b)) for b in puts(cluster)[before:]
    ]  # canary, all traffic back, spec restored at 0 %, restored revision promoted
    assert steps == [
        (uri(cluster, "2"), 10),
        (uri(cluster, "2"), 0),
        (uri(cluster, "1"), 0),
        (uri(cluster, "1"), None),
    ]
    obj = stored(cluster)
    assert isvc.annotations_of(obj)["ssr.io/model-version"] == "1"
    assert isvc.read_state(obj).percent_of(isvc.read_state(obj).latest_ready) == 100
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert tag(cluster, "2", "deploy.status") == "rolled_back"
    assert "smoke test" in tag(cluster, "2", "deploy.reason")
    # the pipeline step's retry: the same answer, nothing written
    writes = len(standin.writes())
    assert deploy(cluster, "--version", "2") == deploy_command.ROLLED_BACK
    assert "rolled back" in capsys.readouterr().out
    assert len(standin.writes()) == writes


def test_a_canary_that_never_starts_rolls_back(cluster, capsys) -> None:
    standin, client, name = cluster["standin"], cluster["client"], cluster["name"]
    assert deploy(cluster) == 0
    set_champions(client, name, ["1", "2"])
    standin.failing[uri(cluster, "2")] = "exit code 2: no such model"
    assert deploy(cluster) == deploy_command.ROLLED_BACK
    assert "no such model" in capsys.readouterr().out
    assert isvc.model_uri(stored(cluster)) == uri(cluster, "1")
    assert client.get_model_version_by_alias(name, "champion").version == "1"


def test_registry_rollback_then_deploy_rolls_out_the_previous_version(cluster, capsys) -> None:
    client, name = cluster["client"], cluster["name"]
    assert deploy(cluster) == 0
    set_champions(client, name, ["1", "2"])
    assert deploy(cluster) == 0
    assert isvc.model_uri(stored(cluster)) == uri(cluster, "2")
    assert main(["promote", "--rollback", "--model-name", name]) == 0
    before = len(puts(cluster))
    assert deploy(cluster) == 0  # a normal canary of version 1
    assert f"promoted: InferenceService {NAMESPACE}/{NAME} serves {uri(cluster, '1')}" in (
        capsys.readouterr().out
    )
    assert [isvc.canary_percent(b) for b in puts(cluster)[before:]] == [10, None]
    assert isvc.annotations_of(stored(cluster))["ssr.io/previous-model-version"] == "2"


def test_an_interrupted_canary_is_resumed_not_restarted(cluster, monkeypatch, capsys) -> None:
    client, name = cluster["client"], cluster["name"]
    assert deploy(cluster) == 0
    set_champions(client, name, ["1", "2"])

    def killed(*args: Any, **kwargs: Any) -> str:
        raise KeyboardInterrupt  # the pod went away during the smoke test

    with monkeypatch.context() as mp:
        mp.setattr(canary_module, "smoke_test", killed)
        assert deploy(cluster) == 130
    assert isvc.canary_percent(stored(cluster)) == 10
    before = len(puts(cluster))
    assert deploy(cluster) == 0
    assert "promoted" in capsys.readouterr().out
    (promotion,) = puts(cluster)[before:]  # no second canary: the promotion only
    assert isvc.model_uri(promotion) == uri(cluster, "2")
    assert "canaryTrafficPercent" not in promotion["spec"]["predictor"]


def test_a_first_rollout_has_nothing_to_roll_back_to(cluster, broken_url, capsys) -> None:
    """No revision was ever rolled out (the manifest's model never loaded): KServe gives the
    canary 100 %; a failing one stays, tagged failed, and the registry is left alone."""
    standin = cluster["standin"]
    standin.reset()
    standin.failing["models:/ssr-emg@champion"] = "no champion yet"
    standin.backends[uri(cluster, "1")] = broken_url
    manifest = copy.deepcopy(MANIFEST)
    manifest["metadata"]["namespace"] = NAMESPACE
    standin.apply(manifest)
    assert deploy(cluster) == deploy_command.FAILED
    assert "no earlier revision to roll back to" in capsys.readouterr().out
    assert tag(cluster, "1", "deploy.status") == "failed"
    assert isvc.model_uri(stored(cluster)) == uri(cluster, "1")


def test_dry_run_prints_the_body_and_writes_nothing(cluster, capsys) -> None:
    assert deploy(cluster, "--dry-run") == 0
    out = capsys.readouterr().out
    body = json.loads(out[: out.rindex("}") + 1])
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert isvc.model_uri(body) == uri(cluster, "1")
    assert "dry run" in out and cluster["standin"].writes() == []


def test_the_step_deploys_in_a_cluster_and_skips_without(cluster, base, caplog) -> None:
    args = (str(base.root), "1", True, cluster["name"], NAME, NAMESPACE, 10, "", [])
    assert deploy_step(*args, timeout_seconds=10)["action"] == "promoted"
    not_promoted = (*args[:2], False, *args[3:])
    assert deploy_step(*not_promoted)["action"] == "not_promoted"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("KUBECONFIG")
        caplog.set_level(logging.INFO, logger=deploy_step_module.__name__)
        writes = len(cluster["standin"].writes())
        assert deploy_step(*args)["action"] == "skipped"
        assert len(cluster["standin"].writes()) == writes
    assert "deploy skipped: no Kubernetes cluster" in caplog.text


def test_a_body_kserve_would_refuse_is_not_sent(cluster) -> None:
    services = isvc.InferenceServices(NAMESPACE)
    body = isvc.write_body(stored(cluster))
    body["spec"]["predictor"]["canaryTrafficPercnt"] = 10
    with pytest.raises(SchemaError, match="canaryTrafficPercnt: unknown field"):
        services.replace(body)
    assert cluster["standin"].writes() == []


# ---- without servers --------------------------------------------------------------------------


def test_status_is_read_as_kserve_writes_it() -> None:
    """The status of KServe's own canary example (docs/samples/v1beta1/rollout/README.md)."""
    rev, host = "my-model-predictor-default-0000", "my-model-predictor-default.default.example.com"
    predictor = {
        "latestCreatedRevision": f"{rev}3",
        "latestReadyRevision": f"{rev}3",
        "latestRolledoutRevision": f"{rev}1",
        "previousRolledoutRevision": f"{rev}1",
        "traffic": [
            {"latestRevision": True, "percent": 10, "revisionName": f"{rev}3", "tag": "latest"},
            {"latestRevision": False, "percent": 90, "revisionName": f"{rev}1", "tag": "prev"},
        ],
        "url": f"http://{host}",
    }
    for target in predictor["traffic"]:
        target["url"] = f"http://{target['tag']}-{host}"
    obj = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    obj["status"]["components"] = {"predictor": predictor}
    state = isvc.read_state(obj)
    assert state.ready and state.rolled_out.endswith("00001")
    assert state.percent_of(state.latest_ready) == 10 and state.percent_of(state.rolled_out) == 90
    latest = state.tagged("latest")
    assert latest is not None and latest.url.startswith("http://latest-")
    assert not isvc.fully_served(obj, state)
    assert isvc.cluster_local(latest.url, "default") == (
        "http://latest-my-model-predictor-default.default.svc.cluster.local"
    )


def test_malformed_predictions_fail_the_smoke_test() -> None:
    good = [{"label": "yes", "confidence": 0.9}]
    assert check_predictions(good, 1, "words", ["yes", "no"]) == ["yes"]
    for bad, why in [
        ([], "expected 1 predictions"),
        ([{"label": "maybe", "confidence": 0.9}], "not one of the model's"),
        ([{"label": "yes", "confidence": 1.5}], "not in"),
    ]:
        with pytest.raises(SmokeTestError, match=why):
            check_predictions(bad, 1, "words", ["yes", "no"])
    assert check_predictions([{"text": "hi there"}], 1, "sentences", None) == ["hi there"]
    assert canary_module.EXIT == {
        "rolled_back": deploy_command.ROLLED_BACK,
        "failed": deploy_command.FAILED,
    }


def test_a_canary_whose_name_does_not_resolve_is_not_judged() -> None:
    """A laptop outside the cluster's domain: an error (the canary stays for a retry with
    --url), not a failed smoke test that would roll it back."""
    with pytest.raises(UnreachableError, match="pass --url"):
        check_health("http://latest-ssr-emg-predictor.team-emg.example.invalid", wait=30)
