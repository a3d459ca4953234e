"""The KServe ``InferenceService`` calls of ``ssr deploy``: read, replace with optimistic
concurrency, and what the status says about revisions and traffic.

Writes are read-modify-write PUTs carrying the ``resourceVersion`` that was read: a write that
raced another (the KServe controller updates the object's status all the time, a person may
``kubectl edit`` it) gets 409 Conflict and is redone on a fresh read. Every body is checked
against KServe's CRD schema first and sent with ``fieldValidation=Strict``, so a field the
installed KServe does not know is refused instead of silently pruned.

The status is read as KServe writes it (source: kserve/kserve master after v0.20,
commit aaac4e2): ``pkg/apis/serving/v1beta1/inference_service_status.go`` (``ComponentStatusSpec``:
latestCreatedRevision, latestReadyRevision, latestRolledoutRevision, previousRolledoutRevision,
traffic copied from the Knative Service; ``PropagateStatus``) and
``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go`` (with
``canaryTrafficPercent`` and a revision rolled out before, the traffic is the latest revision at
that percent, tagged ``latest`` when ``serving.kserve.io/enable-tag-routing`` is "true", and the
last rolled-out revision, tagged ``prev``, at the rest; without it the latest gets 100 %).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ssr.cluster.crd_schema import validate_inference_service
from ssr.cluster.launcher import api_client
from ssr.errors import SSRError

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURAL = "inferenceservices"
KIND = "InferenceService"
CONTAINER = "kserve-container"  # the predictor container of k8s/kserve
MODEL_URI_ENV = "SSR_MODEL_URI"
MODEL_VERSION = "ssr.io/model-version"  # the registry version the spec serves
# What the spec served before the rollout under way (to restore it on a rollback). KServe copies
# the InferenceService's annotations into the revision template, so these are written only
# together with a model change, which makes a new revision anyway.
PREVIOUS_URI = "ssr.io/previous-model-uri"
PREVIOUS_VERSION = "ssr.io/previous-model-version"
REPLACES = "ssr.io/replaces-revision"  # the latest revision when the model last changed
TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# Modes in which canaryTrafficPercent does nothing (pkg/constants/constants.go: Standard and its
# legacy name RawDeployment; the canary split is made by the Knative reconciler only).
RAW_MODES = frozenset({"Standard", "RawDeployment"})
LATEST_TAG = "latest"
PREV_TAG = "prev"
CONFLICT_ATTEMPTS = 5
TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class InferenceServiceError(SSRError):
    """An InferenceService could not be read, written or rolled out."""


class CanaryFailedError(InferenceServiceError):
    """The canary revision failed to start."""


class _ConflictError(Exception):
    """409: the object changed since it was read."""


@dataclass(frozen=True)
class Target:
    """One entry of ``status.components.predictor.traffic`` (a Knative TrafficTarget)."""

    revision: str
    percent: int
    latest: bool
    tag: str = ""
    url: str = ""


@dataclass(frozen=True)
class ServingState:
    """What the predictor's status says, as KServe writes it."""

    ready: bool | None  # the Ready condition: True, False, or None (Unknown or absent)
    message: str  # reason and message of Ready when it is not True
    latest_created: str
    latest_ready: str
    rolled_out: str  # latestRolledoutRevision: the last revision that had 100 % of the traffic
    previous_rolled_out: str
    traffic: tuple[Target, ...]
    url: str
    deployment_mode: str

    def tagged(self, tag: str) -> Target | None:
        return next((t for t in self.traffic if t.tag == tag), None)

    def latest_target(self) -> Target | None:
        """The traffic target that follows the latest ready revision."""
        return next((t for t in self.traffic if t.latest), None)

    def percent_of(self, revision: str) -> int:
        return sum(t.percent for t in self.traffic if t.revision == revision)


def in_cluster() -> bool:
    """A pod's service-account token or a ``$KUBECONFIG``: a cluster to deploy to."""
    return Path(TOKEN_FILE).is_file() or bool(os.environ.get("KUBECONFIG"))


def read_state(obj: dict[str, Any]) -> ServingState:
    """The predictor's revisions, traffic and readiness from ``obj['status']``."""
    status = obj.get("status") or {}
    ready: bool | None = None
    message = ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = {"True": True, "False": False}.get(str(cond.get("status")))
            if ready is not True:
                message = ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)
    predictor = (status.get("components") or {}).get("predictor") or {}
    traffic = tuple(
        Target(
            revision=str(t.get("revisionName") or ""),
            percent=int(t.get("percent") or 0),
            latest=bool(t.get("latestRevision")),
            tag=str(t.get("tag") or ""),
            url=str(t.get("url") or ""),
        )
        for t in predictor.get("traffic") or []
    )
    return ServingState(
        ready=ready,
        message=message,
        latest_created=str(predictor.get("latestCreatedRevision") or ""),
        latest_ready=str(predictor.get("latestReadyRevision") or ""),
        rolled_out=str(predictor.get("latestRolledoutRevision") or ""),
        previous_rolled_out=str(predictor.get("previousRolledoutRevision") or ""),
        traffic=traffic,
        url=str(predictor.get("url") or status.get("url") or ""),
        deployment_mode=str(status.get("deploymentMode") or ""),
    )


def fully_served(obj: dict[str, Any], state: ServingState) -> bool:
    """Ready, the latest revision created after the last model change is ready and has all of
    the traffic."""
    target = state.latest_target()
    return bool(
        state.ready
        and state.latest_created
        and state.latest_created != annotations_of(obj).get(REPLACES)
        and state.latest_ready == state.latest_created
        and target is not None
        and target.revision == state.latest_ready
        and state.percent_of(state.latest_ready) == 100
    )


def new_revision_ready(obj: dict[str, Any], state: ServingState) -> bool:
    """The revision of the last model change is ready and routed (at any percent); a revision
    that failed to start raises :class:`CanaryFailedError`."""
    base = annotations_of(obj).get(REPLACES, "")
    if not state.latest_created or state.latest_created == base:
        return False  # the controller has not made the new revision yet
    if state.latest_ready == state.latest_created and state.ready:
        target = state.latest_target()
        return target is not None and target.revision == state.latest_ready
    if state.ready is False and state.latest_ready != state.latest_created:
        raise CanaryFailedError(f"revision {state.latest_created} failed: {state.message}")
    return False


def cluster_local(url: str, namespace: str) -> str:
    """``http://<tag>-<service>.<namespace>.svc.cluster.local``: the Service Knative makes for a
    traffic tag (its route reconciler's placeholder Service, named after the tag's host), which
    a pod reaches where the status's external domain does not resolve."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or host.endswith(".svc.cluster.local") or host[0].isdigit():
        return url
    return f"http://{host.split('.')[0]}.{namespace}.svc.cluster.local"


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = ((obj.get("spec") or {}).get("predictor") or {}).get("containers") or []
    for container in containers:
        if container.get("name") == CONTAINER:
            return dict(container)
    name = (obj.get("metadata") or {}).get("name", "?")
    raise InferenceServiceError(
        f"InferenceService {name} has no predictor container {CONTAINER!r} (see k8s/kserve)"
    )


def model_uri(obj: dict[str, Any]) -> str:
    """The ``SSR_MODEL_URI`` the predictor container serves ("" when it has none)."""
    for env in _container(obj).get("env") or []:
        if env.get("name") == MODEL_URI_ENV:
            return str(env.get("value") or "")
    return ""


def set_model_uri(obj: dict[str, Any], uri: str) -> None:
    """Point the predictor container's ``SSR_MODEL_URI`` at ``uri`` (in place)."""
    _container(obj)  # a clear error when the container is missing
    for container in obj["spec"]["predictor"]["containers"]:
        if container.get("name") != CONTAINER:
            continue
        env = container.setdefault("env", [])
        for item in env:
            if item.get("name") == MODEL_URI_ENV:
                item.pop("valueFrom", None)
                item["value"] = uri
                return
        env.append({"name": MODEL_URI_ENV, "value": uri})


def canary_percent(obj: dict[str, Any]) -> int | None:
    """``spec.predictor.canaryTrafficPercent`` (None when unset)."""
    value = ((obj.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    return None if value is None else int(value)


def set_canary_percent(obj: dict[str, Any], percent: int | None) -> None:
    """Set ``canaryTrafficPercent``, or remove it (``None``: KServe's promotion) in place."""
    predictor = obj["spec"]["predictor"]
    if percent is None:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = int(percent)


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def set_annotations(obj: dict[str, Any], values: dict[str, str | None]) -> None:
    """Set each annotation; ``None`` removes it (in place)."""
    current = obj.setdefault("metadata", {}).setdefault("annotations", {})
    for key, value in values.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value


def write_body(obj: dict[str, Any]) -> dict[str, Any]:
    """The PUT body of an object that was read: everything but ``status`` (a subresource the
    PUT ignores) and ``metadata.managedFields``; ``resourceVersion`` stays for the conflict
    check, finalizers and owner references stay so the PUT does not remove them."""
    body = {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}
    body.get("metadata", {}).pop("managedFields", None)
    return body


def _message(exc: Any) -> str:
    """The API server's ``Status.message`` in an ApiException (else its body)."""
    body = getattr(exc, "body", None) or ""
    try:
        return str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        return str(body)


class InferenceServices:
    """The few calls ``ssr deploy`` makes on ``inferenceservices`` in one namespace."""

    def __init__(self, namespace: str, client: Any = None) -> None:
        from kubernetes import client as k8s

        self.namespace = namespace
        self.custom = k8s.CustomObjectsApi(client or api_client())

    def where(self, name: str) -> str:
        return f"InferenceService {self.namespace}/{name}"

    def get(self, name: str) -> dict[str, Any] | None:
        """The object (with its ``resourceVersion`` and status), or None when there is none."""
        from kubernetes.client.exceptions import ApiException

        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name
            )
            return found
        except ApiException as exc:
            if exc.status == 404 and "inferenceservices" in _message(exc).lower():
                return None
            raise self._error(exc, f"read {self.where(name)}") from None

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT ``body`` (schema-checked, strict field validation); _ConflictError on 409."""
        from kubernetes.client.exceptions import ApiException

        validate_inference_service(body)
        name = body["metadata"]["name"]
        try:
            written: dict[str, Any] = self.custom.replace_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, body, field_validation="Strict"
            )
            return written
        except ApiException as exc:
            if exc.status == 409:
                raise _ConflictError(_message(exc)) from None
            raise self._error(exc, f"update {self.where(name)}") from None

    def update(self, name: str, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """Read, let ``change`` edit a copy (it returns False when there is nothing to change:
        no write), PUT it; on 409 Conflict read again and redo, a few times. The written
        object, or None when nothing was written."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            current = self.get(name)
            if current is None:
                raise InferenceServiceError(f"{self.where(name)} is gone")
            edited = copy.deepcopy(current)
            if not change(edited):
                return None
            try:
                return self.replace(write_body(edited))
            except _ConflictError as exc:
                log.info("%s changed while it was updated (%s): read again", self.where(name), exc)
                if attempt == CONFLICT_ATTEMPTS:
                    raise InferenceServiceError(
                        f"{self.where(name)} changed under every one of {CONFLICT_ATTEMPTS} "
                        "updates (409 Conflict); try again"
                    ) from None
        return None  # not reached

    def _error(self, exc: Any, what: str) -> InferenceServiceError:
        hint = ""
        if exc.status == 403:
            hint = " (the service account needs the inferenceservices RBAC of k8s/base/pipeline)"
        elif exc.status == 404:
            hint = " (is KServe installed, with its InferenceService CRD?)"
        elif exc.status in (400, 422):
            hint = f": {_message(exc)}"
        return InferenceServiceError(f"cannot {what}: HTTP {exc.status} {exc.reason}{hint}")
