"""A Kubernetes API stand-in on loopback: just the calls the TrainJob and Katib launchers make.

Speaks the custom-objects endpoints of ``trainjobs`` (create: 201, or 409 when it exists; get;
delete), ``clustertrainingruntimes`` (get), and the core pods list and pods/log. A test scripts
each job's status: the states a job goes through, one per GET (``Running`` ... then
``Complete`` or ``Failed`` with a message), and node 0's log lines.

``unknown_fields`` plays an older Trainer's CRD: the field paths (list indices left out) its
schema lacks. A create with ``fieldValidation=Strict`` naming one is refused as the API server
refuses it (400, ``strict decoding error: unknown field "..."``); any other create drops them
silently, as the server's default (Warn) does.

Katib ``experiments`` (create, get, delete) play the same way: each GET applies the next of the
Experiment's scripted statuses (``experiment_script[name]``, status dicts built by a test);
``webhook_refusal`` plays Katib's validating webhook refusing a create (400).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

JOBS = re.compile(
    r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?$"
)
EXPERIMENTS = re.compile(
    r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/experiments(?:/([^/]+))?$"
)
WEBHOOK = 'admission webhook "validator.experiment.katib.kubeflow.org" denied the request: '
RUNTIME = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/clustertrainingruntimes/([^/]+)$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


@dataclass
class StandIn:
    """The server's state; tests read ``requests`` and set ``script``, ``logs``, ``jobs``."""

    url: str = ""
    jobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    script: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    default_script: list[tuple[str, str]] = field(default_factory=lambda: [("Complete", "")])
    logs: dict[str, list[str]] = field(default_factory=dict)
    runtimes: set[str] = field(default_factory=lambda: {"torch-distributed"})
    unknown_fields: set[str] = field(default_factory=set)
    on_complete: Any = None  # called with a job when it turns Complete
    experiments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    experiment_script: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    webhook_refusal: str = ""
    created_at: str = "2030-01-01T00:00:00Z"  # creationTimestamp of created Experiments
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.jobs.clear()
            self.script.clear()
            self.logs.clear()
            self.requests.clear()
            self.default_script = [("Complete", "")]
            self.on_complete = None
            self.unknown_fields.clear()
            self.experiments.clear()
            self.experiment_script.clear()
            self.webhook_refusal = ""
            self.created_at = "2030-01-01T00:00:00Z"

    def add_job(self, namespace: str, body: dict[str, Any], state: str, message: str = "") -> None:
        """A job as if an earlier attempt had created it, in ``state``."""
        job = json.loads(json.dumps(body))
        _set_state(job, state, message)
        self.jobs[(namespace, body["metadata"]["name"])] = job

    def add_experiment(self, namespace: str, body: dict[str, Any], status: dict[str, Any]) -> None:
        """An Experiment as if an earlier attempt had created it, with ``status``."""
        exp = json.loads(json.dumps(body)) | {"status": status}
        exp["metadata"]["creationTimestamp"] = self.created_at
        self.experiments[(namespace, body["metadata"]["name"])] = exp

    def calls(self, method: str, kind: str = "trainjobs") -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if r[0] == method and kind in r[1]]

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig file that points the ``kubernetes`` client here."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "standin", "user": {"token": "standin-token"}}],
                    "contexts": [
                        {
                            "name": "standin",
                            "context": {
                                "cluster": "standin",
                                "user": "standin",
                                "namespace": namespace,
                            },
                        }
                    ],
                    "current-context": "standin",
                }
            )
        )
        return path


def _set_state(job: dict[str, Any], state: str, message: str) -> None:
    if state in ("Complete", "Failed"):
        reason = "DeadlineExceeded" if "deadline" in message.lower() else state
        cond = {"type": state, "status": "True", "reason": reason, "message": message}
        job["status"] = {"conditions": [cond]}
    else:
        job["status"] = {"conditions": []}


def _status(code: int, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "code": code,
        "reason": reason,
    }


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every field path of ``value`` as the API server names them (``a.b[0].c``)."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            out += [path, *_paths(item, path)]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, f"{prefix}[{i}]")
    return out


def _drop(value: Any, unknown: set[str], prefix: str = "") -> Any:
    """``value`` without the fields in ``unknown`` (what pruning keeps)."""
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            if path not in unknown:
                kept[key] = _drop(item, unknown, path)
        return kept
    if isinstance(value, list):
        return [_drop(item, unknown, prefix) for item in value]
    return value


def _handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, payload: Any, text: bool = False) -> None:
            data = payload.encode() if text else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length)) if length else None

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = self._body() if method in ("POST", "DELETE") else None
            with state.lock:
                state.requests.append((method, url.path, body if body is not None else query))
                self._answer(method, url.path, query, body)

        def _experiment(
            self, method: str, namespace: str, name: str | None, query: dict[str, str], body: Any
        ) -> None:
            if method == "POST" and name is None:
                key = (namespace, body["metadata"]["name"])
                if key in state.experiments:
                    return self._send(409, _status(409, "AlreadyExists"))
                unknown = [
                    p for p in _paths(body) if re.sub(r"\[\d+\]", "", p) in state.unknown_fields
                ]
                if unknown and query.get("fieldValidation") == "Strict":
                    named = ", ".join(f'unknown field "{p}"' for p in unknown)
                    message = f"Experiment.kubeflow.org is invalid: strict decoding error: {named}"
                    return self._send(400, _status(400, "BadRequest", message))
                if state.webhook_refusal:
                    message = WEBHOOK + state.webhook_refusal
                    return self._send(400, _status(400, "BadRequest", message))
                exp = json.loads(json.dumps(body))
                exp["metadata"]["creationTimestamp"] = state.created_at
                created = {"type": "Created", "status": "True", "reason": "ExperimentCreated"}
                exp["status"] = {"conditions": [created]}
                state.experiments[key] = exp
                return self._send(201, exp)
            exp = state.experiments.get((namespace, name or ""))
            if exp is None:
                return self._send(404, _status(404, "NotFound"))
            if method == "GET":
                steps = state.experiment_script.get(name or "")
                if steps:
                    exp["status"] = steps.pop(0)
                return self._send(200, exp)
            if method == "DELETE":
                del state.experiments[(namespace, name or "")]
                return self._send(200, _status(200, "Success") | {"status": "Success"})
            return self._send(405, _status(405, "MethodNotAllowed"))

        def _answer(self, method: str, path: str, query: dict[str, str], body: Any) -> None:
            if m := EXPERIMENTS.match(path):
                return self._experiment(method, m.group(1), m.group(2), query, body)
            if m := JOBS.match(path):
                namespace, name = m.groups()
                if method == "POST" and name is None:
                    key = (namespace, body["metadata"]["name"])
                    if key in state.jobs:
                        return self._send(409, _status(409, "AlreadyExists"))
                    unknown = [
                        p for p in _paths(body) if re.sub(r"\[\d+\]", "", p) in state.unknown_fields
                    ]
                    if unknown and query.get("fieldValidation") == "Strict":
                        named = ", ".join(f'unknown field "{p}"' for p in unknown)
                        message = (
                            'TrainJob in version "v1alpha1" cannot be handled as a TrainJob: '
                            f"strict decoding error: {named}"
                        )
                        return self._send(400, _status(400, "BadRequest", message))
                    job = _drop(json.loads(json.dumps(body)), state.unknown_fields)
                    _set_state(job, "Running", "")
                    state.jobs[key] = job
                    return self._send(201, job)
                job = state.jobs.get((namespace, name or ""))
                if job is None:
                    return self._send(404, _status(404, "NotFound"))
                if method == "GET":
                    steps = state.script.setdefault(name, list(state.default_script))
                    if steps and job["status"]["conditions"] == []:
                        _set_state(job, *steps.pop(0))
                        if state.on_complete and job["status"]["conditions"]:
                            state.on_complete(job)
                    return self._send(200, job)
                if method == "DELETE":
                    del state.jobs[(namespace, name)]
                    state.script.pop(name, None)
                    return self._send(200, _status(200, "Success") | {"status": "Success"})
            if (m := RUNTIME.match(path)) and method == "GET":
                if m.group(1) in state.runtimes:
                    return self._send(200, {"kind": "ClusterTrainingRuntime", "metadata": {}})
                return self._send(404, _status(404, "NotFound"))
            if (m := PODS.match(path)) and method == "GET":
                selector = dict(p.split("=", 1) for p in query.get("labelSelector", "").split(","))
                name = selector.get("jobset.sigs.k8s.io/jobset-name", "")
                items = []
                if (m.group(1), name) in state.jobs and name in state.logs:
                    meta = {"name": f"{name}-node-0-0-abcde", "namespace": m.group(1)}
                    meta["labels"] = selector
                    items.append({"metadata": meta, "spec": {"containers": []}})
                return self._send(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
            if (m := POD_LOG.match(path)) and method == "GET":
                name = m.group(2).removesuffix("-node-0-0-abcde")
                lines = state.logs.get(name)
                if lines is None:
                    return self._send(404, _status(404, "NotFound"))
                return self._send(200, "".join(f"{line}\n" for line in lines), text=True)
            return self._send(404, _status(404, "NotFound"))

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

    return Handler


def start_standin() -> tuple[StandIn, ThreadingHTTPServer]:
    state = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server
