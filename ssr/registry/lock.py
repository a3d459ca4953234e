"""An exclusive, expiring lease on a registered model's aliases, taken by every promotion.

MLflow has no compare-and-set, but creating a registered model is atomic (its name is the
primary key; a second create fails with RESOURCE_ALREADY_EXISTS). A promotion therefore
creates the registered model ``<name>.promotion-lock`` (tags: owner id, expiry), moves the
aliases, verifies them and deletes the lock. A lock whose lease expired (a crashed promoter)
is broken by whoever finds it, after re-reading that its owner has not changed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ssr.errors import RegistryError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".promotion-lock"


def error_code(exc: MlflowException) -> str:
    """The MLflow error code of ``exc`` ('' when it has none)."""
    return str(getattr(exc, "error_code", ""))


class PromotionLock:
    """An exclusive, expiring lease on a registered model's aliases (see the module docstring)."""

    def __init__(
        self,
        client: MlflowClient,
        name: str,
        *,
        ttl_s: float = 300.0,
        wait_s: float = 120.0,
        poll_s: float = 0.25,
        owner: str | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.lock_name = f"{name}{LOCK_SUFFIX}"
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def _try_create(self) -> bool:
        expires = time.time() + self.ttl_s
        try:
            self.client.create_registered_model(
                self.lock_name,
                tags={"owner": self.owner, "expires_at": f"{expires:.3f}"},
                description=f"Held while the aliases of {self.name} move; deleted afterwards.",
            )
            return True
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" in error_code(exc):
                return False
            raise RegistryError(f"cannot take the promotion lock {self.lock_name}: {exc}") from None

    def _holder(self) -> tuple[str, float] | None:
        try:
            tags = self.client.get_registered_model(self.lock_name).tags or {}
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in error_code(exc):
                return None
            raise
        return tags.get("owner", "?"), float(tags.get("expires_at", "0") or 0)

    def _break_if_stale(self) -> None:
        holder = self._holder()
        if holder is None or holder[1] > time.time():
            return
        again = self._holder()  # re-read: only break the lease we judged stale
        if again != holder:
            return
        log.warning("breaking stale promotion lock on %s held by %s", self.name, holder[0])
        with contextlib.suppress(MlflowException):  # someone else broke it first
            self.client.delete_registered_model(self.lock_name)

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while not self._try_create():
            self._break_if_stale()
            if time.monotonic() > deadline:
                holder = self._holder()
                raise RegistryError(
                    f"{self.name}: another promotion holds the lock "
                    f"({holder[0] if holder else 'unknown'}); gave up after {self.wait_s:.0f}s"
                )
            time.sleep(self.poll_s)
        log.debug("promotion lock on %s taken by %s", self.name, self.owner)

    def verify(self) -> None:
        """Raise unless this owner still holds an unexpired lease (checked before moving)."""
        holder = self._holder()
        if holder is None or holder[0] != self.owner or holder[1] <= time.time():
            raise RegistryError(f"{self.name}: lost the promotion lock before moving aliases")

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder[0] == self.owner:
            self.client.delete_registered_model(self.lock_name)

    def __enter__(self) -> PromotionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
