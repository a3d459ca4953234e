"""Create or re-attach to a Katib Experiment, follow it to the end, return the best trial's
values as config overrides, delete it.

Like the TrainJob launcher (:mod:`ssr.cluster.launcher`): a retried pipeline step derives the
same name from the run id and re-attaches to the search an earlier attempt started; one found
``Failed`` is deleted and created again, a ``Succeeded`` one is used as it is. Katib's
Experiment has no deadline, so the launcher holds the search to one, counted from the
Experiment's creation: at the deadline it stops the search (deletes the Experiment and with it
the running trials) and keeps the best trial so far.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ssr.cluster.custom_objects import Kind, NamespacedObjects, finished_state
from ssr.cluster.katib import (
    GROUP,
    MIN_KATIB,
    OBJECTIVE,
    PLURAL,
    VERSION,
    KatibError,
    validate_experiment,
)
from ssr.cluster.launcher import api_client, current_namespace

log = logging.getLogger(__name__)

INJECTION_LABEL = "katib.kubeflow.org/metrics-collector-injection=enabled"
# status counters, in the order a progress line names them
COUNTS = (
    ("trialsPending", "pending"),
    ("trialsRunning", "running"),
    ("trialsSucceeded", "succeeded"),
    ("trialsEarlyStopped", "early-stopped"),
    ("trialsFailed", "failed"),
    ("trialMetricsUnavailable", "without metrics"),
    ("trialsKilled", "killed"),
)


@dataclass
class TuneResult:
    """The search's outcome: the best trial's values as ``key=value`` overrides."""

    overrides: list[str]
    trial: str
    value: float
    state: str  # Succeeded, or Running when the deadline stopped the search
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "overrides": self.overrides,
            "best_trial": self.trial,
            OBJECTIVE: self.value,
            "state": self.state,
            "trials": self.counts,
        }


def refusal_message(server_message: str) -> str:
    """One line for the API server's refusal of a create: fields the cluster's Katib does not
    know (strict field validation), or what Katib's admission webhook said, with the fix
    for the refusal every new namespace meets (the metrics-collector injection label)."""
    fields = re.findall(r'unknown field "([^"]+)"', server_message)
    if fields:
        return (
            f"the cluster's Katib does not know {', '.join(fields)}: ssr's Experiment needs "
            f"Katib {MIN_KATIB} or later"
        )
    text = " ".join(server_message.split())
    text = re.sub(r'^admission webhook "[^"]*" denied the request:\s*', "", text)
    if "metrics-collector-injection" in text:
        text += f" (label the namespace {INJECTION_LABEL}, or use a Kubeflow profile namespace)"
    return f"Katib refused it: {text}"


EXPERIMENT = Kind(
    GROUP,
    VERSION,
    PLURAL,
    "Experiment",
    rbac_hint="the step's service account needs the experiments RBAC of k8s/base/pipeline",
    missing_hint=f"is Katib {MIN_KATIB} installed, with its Experiment CRD?",
)


class Experiments(NamespacedObjects):
    """The few Kubernetes calls the launcher makes, in one namespace; a refused create says
    what Katib's webhook or the API server objected to (:func:`refusal_message`). Deleting an
    Experiment deletes its trials and their Jobs."""

    def __init__(self, namespace: str, client: Any = None) -> None:
        super().__init__(EXPERIMENT, namespace, client or api_client(), KatibError, refusal_message)


def experiment_state(exp: dict[str, Any]) -> tuple[str, str]:
    """(``Succeeded`` | ``Failed`` | ``Running``, message) from the Experiment's conditions."""
    return finished_state(exp, "Succeeded")


def counts(exp: dict[str, Any]) -> dict[str, int]:
    status = exp.get("status") or {}
    return {label: int(status.get(key) or 0) for key, label in COUNTS}


def best_trial(exp: dict[str, Any]) -> tuple[str, float, dict[str, str]] | None:
    """(trial name, objective value, {parameter: value}) of ``currentOptimalTrial``, or None
    while no trial has reported the objective."""
    best = (exp.get("status") or {}).get("currentOptimalTrial") or {}
    metrics = (best.get("observation") or {}).get("metrics") or []
    value = next((m.get("min") for m in metrics if m.get("name") == OBJECTIVE), None)
    if not best.get("bestTrialName") or value in (None, "", "unavailable"):
        return None
    params = {a["name"]: str(a["value"]) for a in best.get("parameterAssignments") or []}
    return best["bestTrialName"], float(value), params


def progress(exp: dict[str, Any], trials: int) -> str:
    """One line: the trials in each state and the best so far."""
    parts = [f"{n} {label}" for label, n in counts(exp).items() if n]
    line = f"trials of {trials}: {', '.join(parts) or 'none yet'}"
    best = best_trial(exp)
    if best:
        values = ", ".join(f"{k}={v}" for k, v in best[2].items())
        line += f"; best {OBJECTIVE} {best[1]:.4f} ({best[0]}: {values})"
    return line


def _created(exp: dict[str, Any]) -> float | None:
    stamp = (exp.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        when = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.replace(tzinfo=when.tzinfo or timezone.utc).timestamp()


def _result(exp: dict[str, Any], body: dict[str, Any], state: str, where: str) -> TuneResult:
    best = best_trial(exp)
    if best is None:
        raise KatibError(f"{where} {state.lower()} without a trial that reported {OBJECTIVE}")
    name, value, params = best
    keys = [p["name"] for p in body["spec"]["parameters"]]
    missing = [k for k in keys if k not in params]
    if missing:
        raise KatibError(f"{where}: the best trial {name} has no value for {missing}")
    return TuneResult([f"{k}={params[k]}" for k in keys], name, value, state, counts(exp))


def _attach(experiments: Experiments, body: dict[str, Any], where: str) -> dict[str, Any]:
    name = body["metadata"]["name"]
    exp = experiments.get(name)
    if exp is not None:
        state, message = experiment_state(exp)
        if state != "Failed":
            log.info("attaching to %s (%s)", where, state)
            return exp
        log.warning("%s failed in an earlier attempt (%s): recreating it", where, message)
        experiments.delete(name, wait=600)
    exp, created = experiments.create(body)
    log.info("%s %s", "created" if created else "attached to", where)
    return exp


def launch(
    experiments: Experiments,
    body: dict[str, Any],
    *,
    deadline_seconds: float,
    poll: float = 30.0,
    sink: Callable[[str], None] = print,
    clock: Callable[[], float] = time.time,
) -> TuneResult:
    """Create the Experiment (or attach to it), print a progress line whenever the trials
    change, and return the best trial once it has ``Succeeded``; ``Failed`` raises
    :class:`KatibError` with Katib's message. See the module docstring for the deadline."""
    validate_experiment(body)
    name = body["metadata"]["name"]
    where = f"Experiment {experiments.namespace}/{name}"
    trials = int(body["spec"]["maxTrialCount"])
    exp = _attach(experiments, body, where)
    deadline = (_created(exp) or clock()) + deadline_seconds
    last = ""
    while True:
        state, message = experiment_state(exp)
        line = progress(exp, trials)
        if line != last:
            sink(f"[{name}] {line}")
            last = line
        if state == "Succeeded":
            log.info("%s succeeded (%s)", where, message or "no message")
            return _result(exp, body, state, where)
        if state == "Failed":
            raise KatibError(f"{where} failed: {message or 'no message'}")
        if clock() > deadline:
            experiments.delete(name)  # its running trials stop with it
            if best_trial(exp) is None:
                raise KatibError(
                    f"{where} reached its deadline ({deadline_seconds:.0f}s) before any trial "
                    f"reported {OBJECTIVE}"
                )
            result = _result(exp, body, "Running", where)
            log.warning(
                "%s reached its deadline (%.0fs): search stopped, keeping trial %s",
                where,
                deadline_seconds,
                result.trial,
            )
            return result
        time.sleep(poll)
        found = experiments.get(name)
        if found is None:
            raise KatibError(f"{where} was deleted while the step waited for it")
        exp = found


def describe(name: str, namespace: str | None = None) -> str:
    """One line on the Experiment's state and message ("" when it cannot be read)."""
    try:
        objects = Experiments(namespace or current_namespace())
    except Exception as exc:  # the step is failing already; keep its own error
        log.debug("cannot reach the cluster: %s", exc)
        return ""
    return objects.describe(name, "Succeeded")
