"""Create or re-attach to a TrainJob, follow it to the end, stream node 0's log, delete it.

A retried pipeline step derives the same job name from the run id, so it re-attaches to the job
an earlier attempt started instead of starting a second one. A job found ``Failed`` is deleted
and created again (``--resume auto`` continues from the checkpoints); a ``Complete`` one is used.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssr.cluster.custom_objects import Kind, NamespacedObjects, finished_state
from ssr.cluster.trainjob import (
    GROUP,
    NODE,
    PLURAL,
    RUNTIME_PLURAL,
    VERSION,
    TrainJobError,
    unknown_fields_message,
    validate_trainjob,
)

log = logging.getLogger(__name__)

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# Labels JobSet puts on the pods of a TrainJob; node 0 is completion index 0 of job "node".
NODE0_SELECTOR = (
    "jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name="
    + NODE
    + ",batch.kubernetes.io/job-completion-index=0"
)


def api_client() -> Any:
    """A ``kubernetes`` ApiClient: from ``$KUBECONFIG`` (or ``~/.kube/config``) when there is
    one, else the pod's service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if Path(path.split(os.pathsep)[0]).is_file():
        # named explicitly: the client reads $KUBECONFIG once, when it is first imported
        config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)
    return client.ApiClient(cfg)


def current_namespace() -> str:
    """``$SSR_NAMESPACE``, else the pod's own namespace, else the kubeconfig context's."""
    if os.environ.get("SSR_NAMESPACE"):
        return os.environ["SSR_NAMESPACE"]
    if Path(NAMESPACE_FILE).is_file():
        return Path(NAMESPACE_FILE).read_text().strip()
    try:
        from kubernetes import config

        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        _, active = config.list_kube_config_contexts(config_file=path)
        return str(active["context"].get("namespace") or "default")
    except Exception:  # no kubeconfig: the API server's default
        return "default"


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """(``Complete`` | ``Failed`` | ``Running``, message) from the job's conditions."""
    return finished_state(job, "Complete")


TRAINJOB = Kind(
    GROUP,
    VERSION,
    PLURAL,
    "TrainJob",
    rbac_hint="the step's service account needs the trainjobs RBAC of k8s/base/pipeline",
    missing_hint="is Kubeflow Trainer v2.3 installed, with its TrainJob CRD?",
)


class TrainJobs(NamespacedObjects):
    """The few Kubernetes calls the launcher makes, in one namespace. A refused create names
    the Trainer release the body needs (:func:`~ssr.cluster.trainjob.unknown_fields_message`)."""

    def __init__(self, namespace: str, client: Any = None) -> None:
        from kubernetes import client as k8s

        super().__init__(
            TRAINJOB, namespace, client or api_client(), TrainJobError, unknown_fields_message
        )
        self.core = k8s.CoreV1Api(self.api)

    def runtime_missing(self, runtime: str) -> bool:
        """True when the ClusterTrainingRuntime does not exist; False when it does or when this
        account may not read it (a warning: the create call then tells)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.get_cluster_custom_object(GROUP, VERSION, RUNTIME_PLURAL, runtime)
        except ApiException as exc:
            if exc.status == 404:
                return True
            log.warning("cannot read ClusterTrainingRuntime %s (HTTP %s)", runtime, exc.status)
        return False

    def node0_log(self, name: str) -> tuple[str, str] | None:
        """(pod name, log) of the job's node 0, or None while it has no pod or log."""
        from kubernetes.client.exceptions import ApiException

        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=NODE0_SELECTOR.format(name=name)
        ).items
        if not pods:
            return None
        pod = max(pods, key=lambda p: p.metadata.creation_timestamp or 0).metadata.name
        try:
            text = self.core.read_namespaced_pod_log(pod, self.namespace, container=NODE)
        except ApiException as exc:  # not started yet, or gone
            log.debug("no log of %s yet (HTTP %s)", pod, exc.status)
            return None
        return pod, text


class LogFollower:
    """Prints node 0's new log lines on each :meth:`poll` (a new pod starts over)."""

    def __init__(self, jobs: TrainJobs, name: str, sink: Callable[[str], None]) -> None:
        self.jobs, self.name, self.sink = jobs, name, sink
        self.pod = ""
        self.seen = 0

    def poll(self) -> None:
        try:
            found = self.jobs.node0_log(self.name)
        except Exception as exc:  # logs are a convenience: never fail the step for them
            log.debug("cannot read node 0's log: %s", exc)
            return
        if found is None:
            return
        pod, text = found
        if pod != self.pod:
            self.pod, self.seen = pod, 0
            self.sink(f"--- {pod} (node 0) ---")
        lines = text.splitlines()
        if len(lines) < self.seen:  # the kubelet rotated the log
            self.seen = 0
        for line in lines[self.seen :]:
            self.sink(line)
        self.seen = len(lines)


def launch(
    jobs: TrainJobs,
    body: dict[str, Any],
    *,
    poll: float = 10.0,
    timeout: float | None = None,
    sink: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Create the job (or attach to it), follow it until ``Complete`` (its final object is
    returned) or ``Failed`` (:class:`TrainJobError` with the job's message)."""
    validate_trainjob(body)
    name = body["metadata"]["name"]
    runtime = body["spec"]["runtimeRef"]["name"]
    where = f"TrainJob {jobs.namespace}/{name}"
    job = jobs.get(name)
    if job is not None:
        state, message = job_state(job)
        if state == "Failed":
            log.warning("%s failed in an earlier attempt (%s): recreating it", where, message)
            jobs.delete(name, wait=600)
            job = None
        else:
            log.info("attaching to %s (%s)", where, state)
    if job is None:
        if jobs.runtime_missing(runtime):
            raise TrainJobError(
                f"ClusterTrainingRuntime {runtime} not found: install Kubeflow Trainer v2.3 "
                "with its default runtimes"
            )
        job, created = jobs.create(body)
        log.info("%s %s", "created" if created else "attached to", where)
    follower = LogFollower(jobs, name, sink)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        follower.poll()
        state, message = job_state(job)
        if state == "Complete":
            log.info("%s complete", where)
            return job
        if state == "Failed":
            raise TrainJobError(f"{where} failed: {message or 'no message'}")
        if deadline is not None and time.monotonic() > deadline:
            raise TrainJobError(f"{where} still running after {timeout:.0f}s")
        time.sleep(poll)
        job = jobs.get(name)
        if job is None:
            raise TrainJobError(f"{where} was deleted while the step waited for it")


def describe(name: str, namespace: str | None = None) -> str:
    """One line on the job's state and message ("" when it cannot be read)."""
    try:
        objects = TrainJobs(namespace or current_namespace())
    except Exception as exc:  # the step is failing already; keep its own error
        log.debug("cannot reach the cluster: %s", exc)
        return ""
    return objects.describe(name, "Complete")
