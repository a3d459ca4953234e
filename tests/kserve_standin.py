"""A KServe stand-in on loopback: the ``inferenceservices`` endpoints of the Kubernetes API and
a small controller that writes their status the way KServe in Knative mode does.

API: GET, POST (create), PUT (replace: 409 Conflict unless ``metadata.resourceVersion`` is the
stored one) and PATCH (merge patch) of ``serving.kserve.io/v1beta1`` InferenceServices. Writes
with ``fieldValidation=Strict`` are checked with :func:`ssr.cluster.crd_schema.
validate_inference_service` (400, as the API server refuses unknown fields); every stored change
gets a new ``resourceVersion``, a spec change a new ``generation``. A PUT ignores ``status``.

Controller, one step per GET of an object (as if KServe reconciled between two reads): a change
of the predictor's pod template or of the annotations (KServe copies them into the revision
template) makes a new revision ``<name>-predictor-0000N``, ready ``ready_after`` reads later, or
failed when its model is in ``failing``. The traffic follows pkg/controller/v1beta1/
inferenceservice/reconcilers/knative/ksvc_reconciler.go (``canaryTrafficPercent`` and a revision
rolled out before: ``latest`` at that percent and ``prev`` at the rest; else ``latest`` at 100 %)
and latestRolledoutRevision pkg/apis/serving/v1beta1/inference_service_status.go
(PropagateStatus). Each traffic target's URL is the backend serving its revision's model:
``backends[model URI]``, else ``default_backend``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

from ssr.cluster.crd_schema import SchemaError, validate_inference_service

ISVC = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$"
)


@dataclass
class Revision:
    name: str
    template: str  # what makes a revision: the predictor without the traffic, the annotations
    model_uri: str
    wait: int  # reads until it is ready
    failed: str = ""

    @property
    def ready(self) -> bool:
        return self.wait <= 0 and not self.failed


@dataclass
class StandIn:
    """The server's state; tests set ``backends``, ``failing``, ``conflicts`` and read
    ``objects``, ``requests`` and ``revisions``."""

    url: str = ""
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    revisions: dict[tuple[str, str], list[Revision]] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    default_backend: str = "http://127.0.0.1:9"
    failing: dict[str, str] = field(default_factory=dict)  # model URI -> why it cannot start
    ready_after: int = 1
    conflicts: int = 0  # the next N PUTs meet a concurrent writer (409 Conflict)
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    version: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.objects.clear()
            self.revisions.clear()
            self.backends.clear()
            self.failing.clear()
            self.requests.clear()
            self.conflicts = 0
            self.ready_after = 1

    def writes(self) -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if r[0] in ("PUT", "PATCH", "POST")]

    def apply(self, body: dict[str, Any], settle: bool = True) -> dict[str, Any]:
        """Store ``body`` as ``kubectl apply`` would; with ``settle``, reconcile until its first
        revision is ready and rolled out."""
        meta = body["metadata"]
        obj = copy.deepcopy(body)
        obj["metadata"].update(resourceVersion=self._next(), generation=1, uid="u-1")
        obj["metadata"]["finalizers"] = ["inferenceservice.finalizers"]  # KServe adds it
        key = (meta["namespace"], meta["name"])
        with self.lock:
            self.objects[key] = obj
            for _ in range(self.ready_after + 2 if settle else 0):
                self._reconcile(key)
        return obj

    def _next(self) -> str:
        self.version += 1
        return str(self.version)

    def _reconcile(self, key: tuple[str, str]) -> None:
        obj = self.objects[key]
        before = json.dumps(obj.get("status"), sort_keys=True)
        revisions = self.revisions.setdefault(key, [])
        predictor = dict(obj["spec"]["predictor"])
        canary = predictor.pop("canaryTrafficPercent", None)
        annotations = obj["metadata"].get("annotations") or {}
        template = json.dumps({"p": predictor, "a": annotations}, sort_keys=True)
        if not revisions or revisions[-1].template != template:
            uri = next(
                (
                    e.get("value", "")
                    for c in predictor["containers"]
                    for e in c.get("env", [])
                    if e["name"] == "SSR_MODEL_URI"
                ),
                "",
            )
            name = f"{key[1]}-predictor-{len(revisions) + 1:05d}"
            revisions.append(Revision(name, template, uri, self.ready_after))
        else:
            latest = revisions[-1]
            latest.wait -= 1
            if latest.wait <= 0 and latest.model_uri in self.failing:
                latest.failed = self.failing[latest.model_uri]
        self._status(obj, revisions, canary, annotations)
        if json.dumps(obj.get("status"), sort_keys=True) != before:
            obj["metadata"]["resourceVersion"] = self._next()

    def _status(
        self, obj: dict[str, Any], revisions: list[Revision], canary: Any, annotations: dict
    ) -> None:
        status = obj.setdefault("status", {})
        predictor = status.setdefault("components", {}).setdefault("predictor", {})
        latest = revisions[-1]
        ready = [r for r in revisions if r.ready]
        rolled_out = predictor.get("latestRolledoutRevision", "")
        tags = annotations.get("serving.kserve.io/enable-tag-routing") == "true"
        by_name = {r.name: r for r in revisions}
        traffic = []
        if ready:
            newest = ready[-1]
            percent = canary if canary is not None and rolled_out else 100
            traffic.append(
                {"revisionName": newest.name, "latestRevision": True, "percent": percent}
            )
            if tags:
                traffic[-1]["tag"] = "latest"
            if percent < 100:
                traffic.append(
                    {
                        "revisionName": rolled_out,
                        "latestRevision": False,
                        "percent": 100 - percent,
                        "tag": "prev",
                    }
                )
            for target in traffic:
                uri = by_name[target["revisionName"]].model_uri
                target["url"] = self.backends.get(uri, self.default_backend)
            if percent == 100 and rolled_out != newest.name:  # PropagateStatus
                predictor["previousRolledoutRevision"] = rolled_out
                predictor["latestRolledoutRevision"] = newest.name
            predictor["latestReadyRevision"] = newest.name
            predictor["url"] = f"http://{obj['metadata']['name']}-predictor.example.com"
        predictor["latestCreatedRevision"] = latest.name
        predictor["traffic"] = traffic
        if latest.failed:
            cond = {"type": "Ready", "status": "False", "reason": "RevisionFailed"}
            cond["message"] = f"Revision {latest.name} failed: {latest.failed}"
        elif latest.ready:
            cond = {"type": "Ready", "status": "True"}
        else:
            cond = {"type": "Ready", "status": "Unknown", "reason": "RevisionMissing"}
        status["conditions"] = [cond]
        status["deploymentMode"] = "Serverless"

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig file that points the ``kubernetes`` client here."""
        cluster = {"name": "kserve", "cluster": {"server": self.url}}
        context = {"cluster": "kserve", "user": "kserve", "namespace": namespace}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": "kserve", "user": {"token": "standin-token"}}],
            "contexts": [{"name": "kserve", "context": context}],
            "current-context": "kserve",
        }
        path.write_text(yaml.safe_dump(doc))
        return path


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class Handler(BaseHTTPRequestHandler):
    """The API endpoints; ``state`` is set on a subclass per server."""

    state: StandIn

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fail(self, code: int, reason: str, message: str) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
        self._send(code, status | {"reason": reason, "message": message})

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with self.state.lock:
            self.state.requests.append((method, url.path, {"query": query, "body": body}))
            m = ISVC.match(url.path)
            if not m:
                return self._fail(404, "NotFound", "the server could not find the resource")
            self._answer(method, m.group(1), m.group(2), query, body)

    def _answer(self, method: str, ns: str, name: str | None, query: dict, body: Any) -> None:
        state = self.state
        key = (ns, name or (body or {}).get("metadata", {}).get("name", ""))
        found = state.objects.get(key)
        if method == "POST":
            if found is not None:
                return self._fail(409, "AlreadyExists", f"{key[1]} already exists")
            if not self._refused(query, body):
                self._send(201, state.apply(body, settle=False))
            return None
        if found is None:
            return self._fail(
                404, "NotFound", f'inferenceservices.serving.kserve.io "{key[1]}" not found'
            )
        if method == "GET":
            state._reconcile(key)
            return self._send(200, found)
        return self._write(method, key, found, query, body)

    def _write(
        self, method: str, key: tuple[str, str], found: dict, query: dict, body: Any
    ) -> None:
        state = self.state
        if method == "PATCH":
            merged = {k: copy.deepcopy(v) for k, v in found.items() if k != "status"}
            _merge(merged, body)
            body = merged
        if state.conflicts > 0:  # another writer got there first
            state.conflicts -= 1
            found["metadata"]["resourceVersion"] = state._next()
        sent = (body.get("metadata") or {}).get("resourceVersion")
        if method == "PUT" and sent != found["metadata"]["resourceVersion"]:
            return self._fail(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{key[1]}"'
                ": the object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        if self._refused(query, body):
            return None
        kept = copy.deepcopy(body)
        kept["status"] = found.get("status", {})
        if kept.get("spec") != found.get("spec"):
            kept["metadata"]["generation"] = found["metadata"]["generation"] + 1
        kept["metadata"]["resourceVersion"] = state._next()
        state.objects[key] = kept
        return self._send(200, kept)

    def _refused(self, query: dict, body: Any) -> bool:
        """Strict field validation against KServe's schema, as the API server does it."""
        if query.get("fieldValidation") != "Strict":
            return False
        try:
            validate_inference_service(body)
        except SchemaError as exc:
            self._fail(400, "BadRequest", f"strict decoding error: {exc}")
            return True
        return False

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._route("PATCH")


def start_standin() -> tuple[StandIn, ThreadingHTTPServer]:
    state = StandIn()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server
