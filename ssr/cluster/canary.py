"""Roll an InferenceService to the registry's champion: a canary, its smoke test, then 100 %
or a rollback of the server and of the registry, so that both name the same version.

The spec pins ``SSR_MODEL_URI=models:/<name>/<version>`` (every rollout is a new Knative
revision) with ``canaryTrafficPercent``; KServe splits the traffic between that revision and the
last one rolled out at 100 % (ksvc_reconciler.go), and tags them ``latest`` and ``prev``.
Promotion removes ``canaryTrafficPercent``; rollback sets it to 0 first (all traffic on the
previous revision at once, as KServe's rollout docs do it: docs/samples/v1beta1/rollout), then
restores the previous spec, which starts one more revision of the previous model: it gets
traffic only once it is ready.

Everything is decided from what is there, so a retry resumes instead of redoing: the spec
(model URI, canary percent, the ``ssr.io/*`` annotations written with each model change), the
status, and the version's ``deploy.status`` tag in the registry. Where no earlier revision
exists (the first rollout: KServe gives it 100 % whatever the percent), a failing canary cannot
be rolled back: it stays, the version is tagged ``failed`` and the registry is left as is.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from ssr.cluster import inference_service as isvc
from ssr.cluster.inference_service import (
    CanaryFailedError,
    InferenceServiceError,
    InferenceServices,
    ServingState,
)
from ssr.cluster.smoke import SmokeTestError, smoke_recordings, smoke_test
from ssr.config import Config
from ssr.errors import RegistryError
from ssr.registry.promote import CHAMPION, alias_version, read_history, rollback

log = logging.getLogger(__name__)

STATUS_TAG = "deploy.status"  # canary | promoted | rolled_back | failed
REASON_TAG = "deploy.reason"
WHERE_TAG = "deploy.inference_service"
AT_TAG = "deploy.updated_at"
EXIT = {"rolled_back": 4, "failed": 5}


@dataclass
class Settings:
    """What to roll out where, and how long to wait."""

    name: str
    model_name: str
    canary_percent: int = 10
    timeout: float = 900.0  # for each wait
    poll: float = 5.0
    test_dir: str = ""
    smoke_count: int = 4
    url: str = ""  # the canary's URL instead of the status's (a port-forward)
    health_wait: float = 60.0


@dataclass
class Outcome:
    """What a deploy did: ``noop``, ``promoted``, ``restored``, ``rolled_back``, ``failed``, or
    ``dry_run`` (with the ``body`` it would send)."""

    action: str
    where: str
    model_uri: str
    version: str
    reason: str = ""
    restored: str = ""  # the model URI served again after a rollback
    body: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        return EXIT.get(self.action, 0)

    def line(self) -> str:
        """One line saying what happened."""
        what = {
            "noop": f"nothing to do: {self.where} already serves {self.model_uri} at 100 %",
            "promoted": f"promoted: {self.where} serves {self.model_uri} at 100 %",
            "restored": f"restored: {self.where} serves {self.model_uri} at 100 % again",
            "rolled_back": f"rolled back: {self.model_uri} failed its canary; {self.where} "
            f"serves {self.restored or 'the previous revision'} again",
            "failed": f"failed: {self.model_uri} failed its canary and there is no earlier "
            f"revision to roll back to; {self.where} still serves it",
            "dry_run": f"dry run: {self.where} would {self.reason}",
        }[self.action]
        if self.reason and self.action not in ("dry_run", "noop"):
            what += f" ({self.reason})"
        return what


def pinned_uri(model_name: str, version: str) -> str:
    return f"models:/{model_name}/{version}"


class Rollout:
    """One ``ssr deploy``: the champion of ``settings.model_name`` onto ``settings.name``."""

    def __init__(
        self, services: InferenceServices, client: MlflowClient, cfg: Config, settings: Settings
    ) -> None:
        self.services, self.client, self.cfg, self.s = services, client, cfg, settings
        self.where = services.where(settings.name)

    def _tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.s.model_name, version).tags or {})

    def _tag(self, version: str, status: str, reason: str = "") -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        values = {STATUS_TAG: status, WHERE_TAG: self.where, AT_TAG: stamp, REASON_TAG: reason}
        for key, value in values.items():
            self.client.set_model_version_tag(self.s.model_name, version, key, value[:5000])

    def _get(self) -> dict[str, Any]:
        obj = self.services.get(self.s.name)
        if obj is None:
            raise InferenceServiceError(
                f"{self.where} not found: create it first (kubectl apply -k k8s/kserve)"
            )
        ann = isvc.annotations_of(obj)
        mode = isvc.read_state(obj).deployment_mode or ann.get(isvc.DEPLOYMENT_MODE, "")
        if mode in isvc.RAW_MODES:
            raise InferenceServiceError(
                f"{self.where} runs in {mode} mode, where KServe ignores canaryTrafficPercent: "
                "set the annotation serving.kserve.io/deploymentMode: Knative (Serverless)"
            )
        return obj

    def _wait(
        self, done: Callable[[dict[str, Any], ServingState], bool], what: str
    ) -> tuple[dict[str, Any], ServingState]:
        deadline = time.monotonic() + self.s.timeout
        while True:
            obj = self._get()
            state = isvc.read_state(obj)
            if done(obj, state):
                return obj, state
            if time.monotonic() > deadline:
                detail = f": {state.message}" if state.message else ""
                raise TimeoutError(f"{what} not reached after {self.s.timeout:.0f}s{detail}")
            time.sleep(self.s.poll)

    def _canary_url(self, state: ServingState) -> str:
        if self.s.url:
            return self.s.url
        target = state.tagged(isvc.LATEST_TAG)
        if target is None or not target.url:
            raise InferenceServiceError(
                f"{self.where}: the status has no URL for the tag {isvc.LATEST_TAG!r} "
                f"(annotation {isvc.TAG_ROUTING}: 'true'?); pass --url"
            )
        if Path(isvc.TOKEN_FILE).is_file():  # in a pod: the external domain may not resolve
            return isvc.cluster_local(target.url, self.services.namespace)
        return target.url

    def run(self, expect_version: str | None = None, dry_run: bool = False) -> Outcome:
        """Bring the InferenceService to the champion; with ``expect_version`` (the version a
        pipeline run promoted), a rollback of that version in an earlier attempt is reported
        again (exit status 4) once the server is back on the champion."""
        version = alias_version(self.client, self.s.model_name, CHAMPION)
        if version is None:
            raise RegistryError(f"registered model {self.s.model_name!r} has no champion to deploy")
        outcome = self._converge(version, pinned_uri(self.s.model_name, version), dry_run)
        expected = str(expect_version or "")
        if expected and expected != version and not dry_run:
            tags = self._tags(expected)
            if tags.get(STATUS_TAG) in ("rolled_back", "failed"):
                uri = pinned_uri(self.s.model_name, expected)
                reason = tags.get(REASON_TAG, "")
                restored = outcome.model_uri
                return Outcome(tags[STATUS_TAG], self.where, uri, expected, reason, restored)
            log.info("version %s is not the champion any more (%s is)", expected, version)
        return outcome

    def _converge(self, version: str, target: str, dry_run: bool) -> Outcome:
        obj = self._get()
        result = Outcome("noop", self.where, target, version)
        if isvc.model_uri(obj) == target:
            return self._resume(obj, result, dry_run)
        previous = isvc.annotations_of(obj).get(isvc.PREVIOUS_URI)
        if isvc.canary_percent(obj) == 0 and previous == target:  # a rollback's restore to do
            return _dry(result, f"restore {target}") if dry_run else self._restore(obj, result)
        return self._start(obj, result, dry_run)

    def _resume(self, obj: dict[str, Any], result: Outcome, dry_run: bool) -> Outcome:
        """The spec names the champion already: finish what an earlier attempt started."""
        state = isvc.read_state(obj)
        percent = isvc.canary_percent(obj)
        tags = self._tags(result.version)
        target = result.model_uri
        then: Callable[[], Outcome]
        if percent is None or percent >= 100:
            if isvc.fully_served(obj, state):
                if tags.get(STATUS_TAG) == "canary":  # promoted before an interruption
                    self._tag(result.version, "promoted", "canary passed")
                return result
            what = f"wait for {target} to take all of the traffic"
            then = lambda: self._promote(result, "canary passed")  # noqa: E731
        elif tags.get(STATUS_TAG) == "rolled_back":
            what = f"finish rolling back {target}"
            then = lambda: self._rollback(result, tags.get(REASON_TAG, ""))  # noqa: E731
        elif percent == 0:
            what = f"finish restoring {target}"
            then = lambda: self._finish_restore(result)  # noqa: E731
        else:
            what = f"resume the canary of {target} at {percent} %"
            then = lambda: self._canary(result)  # noqa: E731
        if dry_run:
            return _dry(result, what)
        log.info("%s: %s", self.where, what)
        return then()

    def _start(self, obj: dict[str, Any], result: Outcome, dry: bool) -> Outcome:
        """Write the canary: the pinned model, its version, what it replaces, the percent."""
        smoke_recordings(self.s.test_dir, self.s.smoke_count)  # no test data: fail before writing
        percent = self.s.canary_percent

        def change(current: dict[str, Any]) -> bool:
            ann = isvc.annotations_of(current)
            was = isvc.canary_percent(current)
            values: dict[str, str | None] = {
                isvc.MODEL_VERSION: result.version,
                isvc.TAG_ROUTING: "true",
                isvc.REPLACES: isvc.read_state(current).latest_created,
            }
            if was is None or was >= 100:  # the spec is what serves: the one to restore
                values[isvc.PREVIOUS_URI] = isvc.model_uri(current)
                values[isvc.PREVIOUS_VERSION] = ann.get(isvc.MODEL_VERSION)
            isvc.set_annotations(current, values)
            isvc.set_model_uri(current, result.model_uri)
            isvc.set_canary_percent(current, percent)
            return True

        if dry:
            edited = copy.deepcopy(obj)
            change(edited)
            body = isvc.write_body(edited)
            isvc.validate_inference_service(body)
            return _dry(result, f"start a canary of {result.model_uri} at {percent} %", body)
        self._tag(result.version, "canary", f"{percent} % canary started")
        self.services.update(self.s.name, change)
        log.info("%s: canary of %s at %s %% written", self.where, result.model_uri, percent)
        return self._canary(result)

    def _canary(self, result: Outcome) -> Outcome:
        """Wait for the canary revision, smoke-test it, then promote it or roll back."""
        recordings = smoke_recordings(self.s.test_dir, self.s.smoke_count)
        try:
            _, state = self._wait(
                isvc.new_revision_ready, f"the canary of {result.model_uri} ready"
            )
        except (TimeoutError, CanaryFailedError) as exc:
            return self._rollback(result, str(exc))
        tags = self._tags(result.version)
        labels = json.loads(tags["labels"]) if tags.get("labels") else None
        try:
            url = self._canary_url(state)
            log.info("%s: smoke test of the canary at %s", self.where, url)
            summary = smoke_test(
                url, recordings, tags.get("task", "words"), labels, self.s.health_wait
            )
        except SmokeTestError as exc:
            return self._rollback(result, f"smoke test: {exc}")
        return self._promote(result, f"{self.s.canary_percent} % canary: {summary}")

    def _promote(self, result: Outcome, reason: str) -> Outcome:
        """Remove ``canaryTrafficPercent`` (KServe's promotion) and wait for 100 %."""

        def change(current: dict[str, Any]) -> bool:
            if isvc.canary_percent(current) is None:
                return False
            isvc.set_canary_percent(current, None)
            return True

        self.services.update(self.s.name, change)
        try:
            self._wait(isvc.fully_served, f"{result.model_uri} at 100 %")
        except TimeoutError as exc:
            raise InferenceServiceError(f"{self.where}: promotion under way: {exc}") from None
        self._tag(result.version, "promoted", reason)
        result.action, result.reason = "promoted", reason
        return result

    def _rollback(self, result: Outcome, reason: str) -> Outcome:
        """Traffic back to the previous revision, the registry's champion back, the spec back."""
        obj = self._get()
        state = isvc.read_state(obj)
        if not state.rolled_out or state.rolled_out == state.latest_created:
            log.warning("%s: %s; no earlier revision to roll back to", self.where, reason)
            self._tag(result.version, "failed", reason)
            result.action, result.reason = "failed", reason
            return result
        previous = state.rolled_out
        log.warning("%s: %s: rolling back to revision %s", self.where, reason, previous)
        self._tag(result.version, "rolled_back", reason)

        def no_traffic(current: dict[str, Any]) -> bool:
            if isvc.model_uri(current) != result.model_uri or isvc.canary_percent(current) == 0:
                return False
            isvc.set_canary_percent(current, 0)
            return True

        self.services.update(self.s.name, no_traffic)
        try:
            self._wait(lambda o, s: s.percent_of(previous) == 100, f"all traffic on {previous}")
        except TimeoutError as exc:
            raise InferenceServiceError(f"{self.where}: rollback under way: {exc}") from None
        self._registry_rollback(result.version)
        outcome = self._restore(self._get(), result)
        outcome.action, outcome.reason = "rolled_back", reason
        return outcome

    def _registry_rollback(self, version: str) -> None:
        """``ssr promote --rollback`` when ``version`` is still the champion and one came before."""
        name = self.s.model_name
        if alias_version(self.client, name, CHAMPION) != version:
            return
        if len(read_history(self.client, name)) < 2:
            log.warning("%s: no previous champion: the registry's champion stays %s", name, version)
            return
        done = rollback(self.cfg, client=self.client, model_name=name)
        log.info("registry: %s champion %s -> %s", name, version, done.champion_after)

    def _restore(self, obj: dict[str, Any], result: Outcome) -> Outcome:
        """Put the spec before the failed rollout back (at 0 % until its revision is ready)."""
        ann = isvc.annotations_of(obj)
        previous = ann.get(isvc.PREVIOUS_URI, "")
        failed_uri, failed_version = isvc.model_uri(obj), ann.get(isvc.MODEL_VERSION)
        if not previous:
            log.warning("%s: no previous model URI recorded; the spec stays", self.where)
            result.restored = "the previous revision"
            return result
        if failed_uri != previous:

            def change(current: dict[str, Any]) -> bool:
                if isvc.model_uri(current) != failed_uri:
                    return False
                restored = isvc.annotations_of(current).get(isvc.PREVIOUS_VERSION)
                isvc.set_annotations(
                    current,
                    {
                        isvc.MODEL_VERSION: restored,
                        isvc.PREVIOUS_URI: failed_uri,
                        isvc.PREVIOUS_VERSION: failed_version,
                        isvc.REPLACES: isvc.read_state(current).latest_created,
                    },
                )
                isvc.set_model_uri(current, previous)
                isvc.set_canary_percent(current, 0)
                return True

            self.services.update(self.s.name, change)
            log.info("%s: spec restored to %s", self.where, previous)
        result.restored = previous
        return self._finish_restore(result)

    def _finish_restore(self, result: Outcome) -> Outcome:
        """Wait for the restored spec's revision, then give it all of the traffic."""
        try:
            obj, _ = self._wait(isvc.new_revision_ready, "the restored revision ready")
        except (TimeoutError, CanaryFailedError) as exc:
            raise InferenceServiceError(
                f"{self.where}: {exc}; the traffic stays on the previous revision"
            ) from None
        uri = isvc.model_uri(obj)

        def change(current: dict[str, Any]) -> bool:
            if isvc.canary_percent(current) != 0 or isvc.model_uri(current) != uri:
                return False
            isvc.set_canary_percent(current, None)
            return True

        self.services.update(self.s.name, change)
        try:
            self._wait(isvc.fully_served, f"{uri} at 100 %")
        except TimeoutError as exc:
            raise InferenceServiceError(f"{self.where}: restore under way: {exc}") from None
        if result.action == "noop":
            result.action = "restored"
        result.restored = result.restored or uri
        return result


def _dry(result: Outcome, what: str, body: dict[str, Any] | None = None) -> Outcome:
    result.action, result.reason, result.body = "dry_run", what, body
    return result
