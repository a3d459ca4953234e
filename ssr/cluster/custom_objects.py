"""The custom-object calls the cluster launchers share (TrainJob, Katib Experiment): read,
create with strict field validation, delete in the foreground, and API errors as one line.

Strict field validation matters for every kind we create: the API server's default (Warn)
drops the fields an older controller's CRD lacks and creates the object without them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ssr.errors import SSRError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """A namespaced custom resource and the hints its errors carry."""

    group: str
    version: str
    plural: str
    kind: str
    rbac_hint: str  # for HTTP 403: the Role the caller needs
    missing_hint: str  # for HTTP 404 on create/read: what must be installed


def status_message(exc: Any) -> str:
    """The ``message`` of the API server's Status in an ApiException (else its body)."""
    body = getattr(exc, "body", None) or ""
    try:
        return str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        return str(body)


def finished_state(obj: dict[str, Any], done: str) -> tuple[str, str]:
    """(``done`` | ``Failed`` | ``Running``, "reason: message") from the object's status
    conditions: the first of ``done`` or ``Failed`` that is True."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in (done, "Failed") and cond.get("status") == "True":
            detail = ": ".join(p for p in (cond.get("reason"), cond.get("message")) if p)
            return cond["type"], detail
    return "Running", ""


class NamespacedObjects:
    """Objects of one :class:`Kind` in one namespace; failures raise ``error`` in one line.

    ``refusal`` turns the server's message for a refused create (HTTP 400/422: strict field
    validation, an admission webhook) into that line; "" falls back to the HTTP status.
    """

    def __init__(
        self,
        kind: Kind,
        namespace: str,
        client: Any,
        error: type[SSRError],
        refusal: Callable[[str], str] = lambda message: "",
    ) -> None:
        from kubernetes import client as k8s

        self.kind, self.namespace, self.error, self.refusal = kind, namespace, error, refusal
        self.api = client
        self.custom = k8s.CustomObjectsApi(client)

    def where(self, name: str) -> str:
        return f"{self.kind.kind} {self.namespace}/{name}"

    def api_error(self, exc: Any, what: str) -> SSRError:
        hint = {403: self.kind.rbac_hint, 404: self.kind.missing_hint}.get(exc.status, "")
        return self.error(
            f"cannot {what}: HTTP {exc.status} {exc.reason}" + (f" ({hint})" if hint else "")
        )

    def _args(self) -> tuple[str, str, str, str]:
        return self.kind.group, self.kind.version, self.namespace, self.kind.plural

    def get(self, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        from kubernetes.client.exceptions import ApiException

        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(*self._args(), name)
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self.api_error(exc, f"read {self.where(name)}") from None

    def create(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``body`` with strict field validation; (the object, True) or, when it exists
        already (a retried step), (that object, False)."""
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        try:
            made = self.custom.create_namespaced_custom_object(
                *self._args(), body, field_validation="Strict"
            )
            return made, True
        except ApiException as exc:
            if exc.status == 409 and (found := self.get(name)) is not None:
                return found, False
            if exc.status in (400, 422) and (line := self.refusal(status_message(exc))):
                raise self.error(f"cannot create {self.where(name)}: {line}") from None
            raise self.api_error(exc, f"create {self.where(name)}") from None

    def describe(self, name: str, done: str) -> str:
        """One line on the object's state and message ("" when it cannot be read): what a
        failed step reports besides the launcher's exit status."""
        try:
            found = self.get(name)
        except Exception as exc:  # the step is failing already; keep its own error
            log.debug("cannot read %s: %s", self.where(name), exc)
            return ""
        if found is None:
            return f"{self.where(name)} does not exist"
        state, message = finished_state(found, done)
        return f"{self.where(name)} {state}" + (f": {message}" if message else "")

    def delete(self, name: str, wait: float = 0.0, poll: float = 2.0) -> bool:
        """Delete the object and what it owns (foreground); False when there was none. With
        ``wait``, wait up to that many seconds until it is gone."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                *self._args(), name, propagation_policy="Foreground"
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise self.api_error(exc, f"delete {self.where(name)}") from None
        deadline = time.monotonic() + wait
        while wait and self.get(name) is not None:
            if time.monotonic() > deadline:
                raise self.error(f"{self.where(name)} still exists after {wait}s")
            time.sleep(poll)
        return True
