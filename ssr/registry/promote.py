"""Aliases, promotion, rollback and copies between registered models, under a lock.

Aliases (never the deprecated stages): ``challenger`` is the newest registered candidate,
``champion`` the model in service, ``previous-champion`` the one before it. The registered
model tag ``champion_history`` holds the ordered list of champion versions (oldest first);
after every move ``champion`` equals its last entry and ``previous-champion`` the one before.

Every move happens under :class:`~ssr.registry.lock.PromotionLock`, a lease on the model's
aliases (MLflow has no compare-and-set).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion, RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ssr.config import Config
from ssr.errors import RegistryError
from ssr.registry.gate import GateDecision, SentenceGateDecision
from ssr.registry.gating import EVALUATION_METRICS as EVALUATION_METRICS
from ssr.registry.gating import evaluation_per_session as evaluation_per_session
from ssr.registry.gating import gate_versions
from ssr.registry.lock import PromotionLock, error_code

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
HISTORY_TAG = "champion_history"
MAX_HISTORY = 100  # registered-model tag values are limited in size


@dataclass
class PromotionResult:
    """What a promote / rollback / copy did (or, with ``dry_run``, would do)."""

    model_name: str
    action: str  # "promote", "reject", "noop", "rollback", "copy"
    candidate: str | None
    champion_before: str | None
    champion_after: str | None
    dry_run: bool = False
    decision: GateDecision | SentenceGateDecision | None = None
    source: str | None = None  # "name/version" copied from, for cross-model promotion

    @property
    def moved(self) -> bool:
        return self.champion_before != self.champion_after


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    model = _registered_model(client, name)
    version = model.aliases.get(alias) if model.aliases else None
    return None if version is None else str(version)


def _registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in error_code(exc):
            raise RegistryError(f"registered model {name!r} does not exist") from None
        raise RegistryError(f"registered model {name!r}: {exc.message}") from None


def _model_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"registered model {name!r} has no version {version!r}") from None


def read_history(client: MlflowClient, name: str) -> list[str]:
    """The ordered champion history (oldest first) kept as a registered-model tag."""
    raw = (_registered_model(client, name).tags or {}).get(HISTORY_TAG)
    if not raw:
        return []
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        raise RegistryError(f"{name}: tag {HISTORY_TAG} is not valid JSON: {raw[:80]!r}") from None
    return [str(v) for v in history]


def check_consistent(client: MlflowClient, name: str) -> list[str]:
    """Raise :class:`RegistryError` unless ``champion``/``previous-champion`` match the history."""
    model = _registered_model(client, name)
    aliases = {k: str(v) for k, v in (model.aliases or {}).items()}
    history = read_history(client, name)
    champion = history[-1] if history else None
    previous = history[-2] if len(history) > 1 else None
    if aliases.get(CHAMPION) != champion or aliases.get(PREVIOUS) != previous:
        raise RegistryError(
            f"{name}: aliases champion={aliases.get(CHAMPION)} previous-champion="
            f"{aliases.get(PREVIOUS)} disagree with {HISTORY_TAG}={history}"
        )
    return history


def _write_champion(client: MlflowClient, name: str, history: list[str]) -> None:
    """Point the aliases at ``history`` (oldest first) and store it; verify the result."""
    history = history[-MAX_HISTORY:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    if len(history) > 1:
        client.set_registered_model_alias(name, PREVIOUS, history[-2])
    else:
        _delete_alias(client, name, PREVIOUS)
    if history:
        client.set_registered_model_alias(name, CHAMPION, history[-1])
    else:
        _delete_alias(client, name, CHAMPION)
    check_consistent(client, name)


def _delete_alias(client: MlflowClient, name: str, alias: str) -> None:
    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in error_code(exc):
            raise


@contextmanager
def _locked(client: MlflowClient, name: str, dry_run: bool) -> Iterator[PromotionLock | None]:
    if dry_run:
        yield None
        return
    with PromotionLock(client, name) as lock:
        yield lock


def _record_decision(
    client: MlflowClient,
    name: str,
    candidate: str,
    champion: str | None,
    decision: GateDecision | SentenceGateDecision,
) -> None:
    """Gate numbers on both versions: plain ``gate.*`` on the candidate, per-candidate on the
    champion (it meets many challengers)."""
    tags = decision.to_tags()
    tags["gate.compared_against"] = champion or "none"
    tags["gate.decided_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for key, value in tags.items():
        client.set_model_version_tag(name, candidate, key, value)
    if champion is not None:
        for key, value in tags.items():
            suffix = key.removeprefix("gate.")
            client.set_model_version_tag(name, champion, f"gate.vs_v{candidate}.{suffix}", value)
        client.set_model_version_tag(name, champion, "gate.last_challenger", candidate)


def promote(
    cfg: Config,
    *,
    client: MlflowClient,
    model_name: str | None = None,
    version: str | None = None,
    dry_run: bool = False,
) -> PromotionResult:
    """Gate ``version`` (default: the ``challenger`` alias) against the champion; move
    ``champion`` if it passes. The decision is tagged on both versions (not on a dry run)."""
    name = model_name or cfg.registry.model_name
    with _locked(client, name, dry_run) as lock:
        candidate = str(version) if version else alias_version(client, name, CHALLENGER)
        if candidate is None:
            raise RegistryError(f"{name}: no version given and no {CHALLENGER!r} alias")
        cand_version = _model_version(client, name, candidate)
        history = read_history(client, name)
        champion = alias_version(client, name, CHAMPION)
        if champion == candidate:
            return PromotionResult(name, "noop", candidate, champion, champion, dry_run)
        champ_version = None if champion is None else _model_version(client, name, champion)
        decision = gate_versions(cfg, client, cand_version, champ_version)
        if not dry_run:
            _record_decision(client, name, candidate, champion, decision)
        after = candidate if decision.promote else champion
        result = PromotionResult(
            name,
            "promote" if decision.promote else "reject",
            candidate,
            champion,
            after,
            dry_run,
            decision,
        )
        if dry_run or not decision.promote:
            return result
        assert lock is not None
        lock.verify()
        if champion is not None and (not history or history[-1] != champion):
            history.append(champion)  # a champion set by hand: keep it in the history
        _write_champion(client, name, [*history, candidate])
        if alias_version(client, name, CHALLENGER) == candidate:
            _delete_alias(client, name, CHALLENGER)
        client.set_model_version_tag(name, candidate, "promoted_at", _now())
        return result


def rollback(
    cfg: Config, *, client: MlflowClient, model_name: str | None = None, dry_run: bool = False
) -> PromotionResult:
    """Move ``champion`` back to the previous champion (no gate: it served before)."""
    name = model_name or cfg.registry.model_name
    with _locked(client, name, dry_run) as lock:
        history = check_consistent(client, name)
        if len(history) < 2:
            raise RegistryError(f"{name}: no previous champion to roll back to (history {history})")
        current, previous = history[-1], history[-2]
        result = PromotionResult(name, "rollback", previous, current, previous, dry_run)
        if dry_run:
            return result
        assert lock is not None
        lock.verify()
        _write_champion(client, name, history[:-1])
        client.set_model_version_tag(name, current, "rolled_back_at", _now())
        client.set_model_version_tag(name, previous, "restored_from", current)
        return result


def copy_version(client: MlflowClient, source: str, version: str, target: str) -> str:
    """Copy ``source`` version into registered model ``target`` (created if needed; the copy
    keeps the tags) and tag it ``promoted_from``; return the new version. No alias moves."""
    _model_version(client, source, version)
    try:
        copied = client.copy_model_version(f"models:/{source}/{version}", target)
    except MlflowException as exc:
        raise RegistryError(f"cannot copy {source}/{version} to {target}: {exc}") from None
    new_version = str(copied.version)
    client.set_model_version_tag(target, new_version, "promoted_from", f"{source}/{version}")
    return new_version


def promote_across(
    cfg: Config,
    *,
    client: MlflowClient,
    source: str,
    target: str,
    version: str | None = None,
    dry_run: bool = False,
) -> PromotionResult:
    """Copy ``source`` version (default: its champion) into ``target`` and make it champion there.

    Used between environments (e.g. ``ssr-emg-staging`` -> ``ssr-emg-prod``): the gate ran in
    the source model; tags travel with the copy and record where it came from.
    """
    src_version = str(version) if version else alias_version(client, source, CHAMPION)
    if src_version is None:
        raise RegistryError(f"{source}: no version given and no {CHAMPION!r} alias")
    _model_version(client, source, src_version)
    try:
        client.get_registered_model(target)
        target_exists = True
    except MlflowException:
        target_exists = False
    champion = alias_version(client, target, CHAMPION) if target_exists else None
    if dry_run:
        return PromotionResult(
            target,
            "copy",
            None,
            champion,
            f"(copy of {source}/{src_version})",
            True,
            source=f"{source}/{src_version}",
        )
    with PromotionLock(client, target) as lock:
        new_version = copy_version(client, source, src_version, target)
        history = read_history(client, target)
        champion = alias_version(client, target, CHAMPION)
        if champion is not None and (not history or history[-1] != champion):
            history.append(champion)
        lock.verify()
        _write_champion(client, target, [*history, new_version])
        client.set_model_version_tag(target, new_version, "promoted_at", _now())
    return PromotionResult(
        target, "copy", new_version, champion, new_version, False, source=f"{source}/{src_version}"
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
