"""The pipeline's deploy step: ``ssr deploy`` of the champion a run just promoted, or a log line
saying why not where there is no cluster (``make run-local``)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssr.cluster.inference_service import TOKEN_FILE, in_cluster
from ssr.steps import RAW, StepError, config_args, run_cli

log = logging.getLogger(__name__)


def deploy_step(
    artifact_dir: str,
    version: str,
    promoted: bool,
    model_name: str,
    inference_service: str,
    namespace: str,
    canary_percent: int,
    config_yaml: str,
    overrides: Sequence[str],
    timeout_seconds: float = 900.0,
) -> dict[str, Any]:
    """``ssr deploy --version VERSION`` of a version register ``promoted``: canary, smoke test
    on the artifact's raw test split, promote or roll back; the outcome (``action``
    ``not_promoted``, or ``skipped`` where there is no cluster). A rollback fails the step
    (exit status 4); its retry finds the rollback done and fails again without writing anything.
    An empty ``namespace`` is the run's own (``$SSR_NAMESPACE``)."""
    if not promoted:
        log.info("deploy: version %s was not promoted; the champion stays deployed", version)
        return {"action": "not_promoted", "version": version}
    if not in_cluster():
        log.info(
            "deploy skipped: no Kubernetes cluster here (no service-account token at %s and no "
            "$KUBECONFIG); InferenceService %s not updated",
            TOKEN_FILE,
            inference_service,
        )
        return {"action": "skipped", "version": version}
    if not version.strip() or "{{" in version:
        raise StepError(f"version {version!r} is not a registered version")
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "deploy.json"
        args = ["deploy", *config_args(config_yaml, tmp), *overrides]
        args += ["--name", inference_service, "--model-name", model_name]
        args += ["--version", version.strip(), "--canary-percent", str(int(canary_percent))]
        args += ["--timeout", str(float(timeout_seconds))]
        args += ["--test-dir", str(Path(artifact_dir) / RAW / "test"), "--result-file", str(result)]
        if namespace.strip():
            args += ["--namespace", namespace.strip()]
        try:
            run_cli(args)
        except StepError as exc:  # say what happened to the canary, not only the exit status
            if not result.is_file():
                raise
            done = json.loads(result.read_text())
            raise StepError(f"{exc}: {done['action']}: {done['reason']}") from None
        outcome: dict[str, Any] = json.loads(result.read_text())
    return outcome
