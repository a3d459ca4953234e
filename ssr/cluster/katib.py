"""The Katib ``Experiment`` (``kubeflow.org/v1beta1``, Katib v0.19) of a pipeline's
hyper-parameter search: its name, its body built from an ``ssr tune`` search space, the metric
line its trials print, and a strict check of the body before it is sent.

Each trial is a ``batch/v1`` Job running ``ssr katib trial`` (``ssr train``'s code path) with the
trial's values as config overrides. Its metrics reach Katib through the StdOut collector: Katib
wraps the trial's command, sends its output to a file and parses it with
:data:`METRICS_FORMAT`; :func:`ssr.cluster.katib_trial.metric_line` writes those lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ssr.cluster.secrets import secret_env
from ssr.cluster.trainjob import CONTAINER_SECURITY, GPU_RESOURCE, POD_LABELS, POD_SECURITY
from ssr.errors import SSRError
from ssr.yaml_io import yaml_load

if TYPE_CHECKING:
    from ssr.tuning.space import Param, SearchSpace

GROUP = "kubeflow.org"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Experiment"
PLURAL = "experiments"
MIN_KATIB = "v0.19"
NAME_PREFIX = "ssr-tune-"
MAX_NAME = 40  # Katib's webhook refuses longer experiment names
RUN_ID_LABEL = "ssr.io/pipeline-run-id"
DEFAULT_DEADLINE_SECONDS = 12 * 3600
TRIAL_CONTAINER = "trial"  # the trial Job's container: Katib's primaryContainerName
TRIAL_WORKDIR = "/tmp/ssr-trial"  # a trial's config, checkpoints and plots (its own pod)
TRIAL_NAME_PARAM = "trialName"  # ${trialSpec.Name}: the trial's run name in MLflow

# Optuna's TPE, as `ssr tune` samples: Katib v0.19's katib-config serves "multivariate-tpe" with
# its Optuna suggestion service (TPESampler(multivariate=True, constant_liar=True): parallel
# trials do not all sample the same point), but "tpe" with Hyperopt, which cannot be given its
# random start-up trials (manifests/v1beta1/installs/katib-standalone/katib-config.yaml,
# pkg/suggestion/v1beta1/optuna/service.py and hyperopt/service.py).
ALGORITHM = "multivariate-tpe"
# What `ssr train` selects its best epoch on; Katib keeps each trial's minimum (the best epoch).
OBJECTIVE = "val_session_mean_loss"
ADDITIONAL_METRICS = ("val_loss", "train_loss")
# A line only trials print: "<RFC 3339 time> ssr-katib-metric NAME=VALUE". Katib takes the first
# group as the name, the second as the value, and a leading RFC 3339 time as the time stamp
# that orders the values (median stopping averages a trial's first values).
METRIC_MARK = "ssr-katib-metric"
METRICS_FORMAT = METRIC_MARK + r" ([\w-]+)=([+-]?\d*(?:\.\d+)?(?:[eE][+-]?\d+)?)"
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_TEMPLATE_PARAM = re.compile(r"\$\{trialParameters\.(.+?)\}")


class KatibError(SSRError):
    """An Experiment could not be built, checked, created, or it failed."""


def experiment_name(run_id: str) -> str:
    """``ssr-tune-`` + 12 hex digits of the run id's SHA-256: the same on every retry of the
    step, short enough for the trial, Job and pod names Katib derives from it."""
    run_id = run_id.strip()
    if not run_id or "{{" in run_id:
        raise KatibError(f"run id {run_id!r} is not a pipeline run id")
    return NAME_PREFIX + hashlib.sha256(run_id.encode()).hexdigest()[:12]


def value_text(value: Any) -> str:
    """``value`` as override text that reads back as the same value (an override's value is
    YAML): a string that YAML would read as a number or boolean is quoted."""
    if isinstance(value, str) and yaml_load(value) == value and value.strip() == value:
        return value
    return json.dumps(value)


def trial_parameter(key: str) -> str:
    """The name a config key has in the trial template (``${trialParameters.NAME}``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", key)


def _parameter(p: Param) -> dict[str, Any]:
    """One Katib ``ParameterSpec``: what Katib's Optuna suggestion service turns into the same
    distribution ``ssr tune`` samples (pkg/suggestion/v1beta1/optuna/base_service.py)."""
    if p.kind == "categorical":
        choices = [value_text(c) for c in p.choices]
        for text in choices:
            if "'" in text:  # the trial's shell script single-quotes its arguments
                raise KatibError(f"params.{p.key}: the choice {text!r} may not contain a quote")
        return {"name": p.key, "parameterType": "categorical", "feasibleSpace": {"list": choices}}
    assert p.low is not None and p.high is not None
    integer = p.kind == "int"
    space = {"min": value_text(int(p.low) if integer else float(p.low))}
    space["max"] = value_text(int(p.high) if integer else float(p.high))
    space["distribution"] = "logUniform" if p.log else "uniform"
    if p.step is not None or (integer and not p.log):
        space["step"] = value_text(int(p.step or 1) if integer else float(p.step or 0))
    return {"name": p.key, "parameterType": "int" if integer else "double", "feasibleSpace": space}


def search_settings(space: SearchSpace, seed: int | None) -> dict[str, Any]:
    """``algorithm`` (:data:`ALGORITHM`: ``startup_trials`` random trials first, the seed as
    ``random_state``) and ``earlyStopping`` (median stopping: once a trial has reported
    ``warmup_epochs + 1`` epochs, its best value so far against the median of finished trials'
    means over as many epochs, from ``startup_trials`` finished trials on)."""
    settings = [{"name": "n_startup_trials", "value": str(space.sampler_startup_trials)}]
    if seed is not None:
        settings.append({"name": "random_state", "value": str(seed)})
    out: dict[str, Any] = {"algorithm": {"algorithmName": ALGORITHM, "algorithmSettings": settings}}
    if space.pruning:
        rules = [
            {"name": "min_trials_required", "value": str(max(space.pruner_startup_trials, 1))},
            {"name": "start_step", "value": str(space.warmup_epochs + 1)},
        ]
        out["earlyStopping"] = {"algorithmName": "medianstop", "algorithmSettings": rules}
    return out


def trial_command(
    config_uri: str,
    train_args: Sequence[str],
    space: SearchSpace,
    group: str = "",
    workdir: str = TRIAL_WORKDIR,
) -> str:
    """The trial container's ``sh -c`` script. Katib's StdOut collector appends a redirection
    and a completion marker to the script (pkg/webhook/v1beta1/pod/utils.go wrapWorkerContainer
    joins the arguments with spaces), so every argument is shell-quoted here, once."""
    args = ["ssr", "katib", "trial"]
    if config_uri:
        args.append(f"--config-uri={config_uri}")
    args += ["--", *train_args]
    args += [f"{p.key}=${{trialParameters.{trial_parameter(p.key)}}}" for p in space.params]
    args += [
        f"training.checkpoint_dir={workdir}/checkpoints",  # the pod's own: the train step
        f"training.output_dir={workdir}/outputs",  # trains the chosen config again
        f"tracking.run_name=${{trialParameters.{TRIAL_NAME_PARAM}}}",
        *([f"tracking.wandb.group={group}"] if group else []),
    ]
    return shlex.join(args)


def _job(
    image: str, script: str, gpus: int, cpu: str, memory: str, shm: str, gpu: str, deadline: int
) -> dict[str, Any]:
    """The trial's Job: one pod, no retry (Katib's collector reports a pod's metrics when it
    ends, so a second pod would add its epochs to the first's), the train step's resources and
    GPU toleration, the pipeline's secrets by reference, and the pod labels and security of
    TrainJob pods (no Istio sidecar, MLflow's NetworkPolicy role, Pod Security restricted)."""
    limits = {"cpu": str(cpu), "memory": str(memory)} | ({gpu: str(gpus)} if gpus else {})
    container = {
        "name": TRIAL_CONTAINER,
        "image": image,
        "command": ["sh", "-c"],
        "args": [script],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *secret_env()],
        "resources": {"requests": {"cpu": str(cpu), "memory": str(memory)}, "limits": limits},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": POD_SECURITY,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}],
    }
    if gpus:
        pod["tolerations"] = [{"key": gpu, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": {"app.kubernetes.io/part-of": "ssr"}},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(deadline),
            "template": {"metadata": {"labels": dict(POD_LABELS)}, "spec": pod},
        },
    }


def default_max_failed(trials: int) -> int:
    """Failed trials that fail the search: a quarter of them, at least 2 (one flaky trial is
    not a broken search), at most all."""
    return min(trials, max(2, math.ceil(trials / 4)))


def build_experiment(
    name: str,
    namespace: str,
    image: str,
    space: SearchSpace,
    train_args: Sequence[str],
    *,
    trials: int,
    parallel: int,
    max_failed: int | None = None,
    config_uri: str = "",
    run_id: str = "",
    seed: int | None = None,
    deadline_seconds: int = DEFAULT_DEADLINE_SECONDS,
    gpus: int = 1,
    cpu: str = "4",
    memory: str = "16Gi",
    shm_size: str = "8Gi",
    gpu_resource: str = GPU_RESOURCE,
    workdir: str = TRIAL_WORKDIR,
) -> dict[str, Any]:
    """The Experiment body: ``trials`` trials, ``parallel`` at a time, minimising
    :data:`OBJECTIVE`; each trial's Job may run ``deadline_seconds`` (the launcher holds the
    whole search to the same deadline: Katib's Experiment has no deadline field)."""
    if trials < 1 or parallel < 1:
        raise KatibError(f"trials and parallel trials must be at least 1, got {trials}, {parallel}")
    if deadline_seconds < 1:
        raise KatibError(f"the deadline must be a positive number of seconds: {deadline_seconds}")
    max_failed = default_max_failed(trials) if max_failed is None else max_failed
    if not 1 <= max_failed <= trials:
        raise KatibError(f"max failed trials must be between 1 and {trials}, got {max_failed}")
    if gpus < 0:
        raise KatibError(f"gpus must be >= 0, got {gpus}")
    labels = {"app.kubernetes.io/part-of": "ssr", "app.kubernetes.io/component": "tune"}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if run_id:
        metadata["annotations"] = {RUN_ID_LABEL: run_id}
        if _LABEL_VALUE.match(run_id):
            labels[RUN_ID_LABEL] = run_id
    script = trial_command(config_uri, train_args, space, group=name, workdir=workdir)
    job = _job(image, script, gpus, cpu, memory, shm_size, gpu_resource, deadline_seconds)
    trial_params = [
        {"name": trial_parameter(p.key), "description": p.describe(), "reference": p.key}
        for p in space.params
    ]
    trial_params.append(
        {
            "name": TRIAL_NAME_PARAM,
            "description": "the trial's name",
            "reference": "${trialSpec.Name}",
        }
    )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "objective": {
                "type": "minimize",
                "objectiveMetricName": OBJECTIVE,
                "additionalMetricNames": list(ADDITIONAL_METRICS),
                "metricStrategies": [{"name": OBJECTIVE, "value": "min"}],
            },
            **search_settings(space, seed),
            "parameters": [_parameter(p) for p in space.params],
            "maxTrialCount": int(trials),
            "parallelTrialCount": min(int(parallel), int(trials)),
            "maxFailedTrialCount": int(max_failed),
            "resumePolicy": "Never",  # Katib removes the suggestion service once it is done
            "metricsCollectorSpec": {
                "collector": {"kind": "StdOut"},
                "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}},
            },
            "trialTemplate": {
                "primaryContainerName": TRIAL_CONTAINER,
                "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                "failureCondition": 'status.conditions.#(type=="Failed")#|#(status=="True")#',
                "trialParameters": trial_params,
                "trialSpec": job,
            },
        },
    }


def _dropped(sent: Any, kept: Any, path: str = "") -> list[str]:
    """Field paths of ``sent`` that ``kept`` (the body after a round trip through the models)
    lost or changed: what Katib would ignore, or read differently."""
    if isinstance(sent, dict) and isinstance(kept, dict):
        out = [f"{path}.{k}".lstrip(".") for k in sent if k not in kept]
        for key in sent.keys() & kept.keys():
            out += _dropped(sent[key], kept[key], f"{path}.{key}")
        return out
    if isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        pairs = enumerate(zip(sent, kept, strict=True))
        return [d for i, (a, b) in pairs for d in _dropped(a, b, f"{path}[{i}]")]
    return [] if sent == kept else [path.lstrip(".") or "<root>"]


_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
}


def kubernetes_problems(value: Any, kind: str, path: str) -> list[str]:
    """Fields of ``value`` that the ``kubernetes`` client's model ``kind`` (e.g. ``V1Job``)
    does not know, or of the wrong type: the trial template is free-form to Katib's models
    (``trialSpec: object``), and Katib's webhook ignores what batch/v1 does not know."""
    from kubernetes.client import models

    if kind.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [
            e
            for i, v in enumerate(value)
            for e in kubernetes_problems(v, kind[5:-1], f"{path}[{i}]")
        ]
    if kind.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        inner = kind[5:-1].split(", ", 1)[1]
        return [e for k, v in value.items() for e in kubernetes_problems(v, inner, f"{path}.{k}")]
    if kind in _PRIMITIVES:
        ok = isinstance(value, _PRIMITIVES[kind]) and (
            kind == "bool" or not isinstance(value, bool)
        )
        return [] if ok or kind == "object" else [f"{path}: expected {kind}, got {value!r}"]
    model = getattr(models, kind)
    if not isinstance(value, dict):
        return [f"{path}: expected a {kind} mapping"]
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        where = f"{path}.{key}".lstrip(".")
        if key not in fields:
            problems.append(f"{where}: unknown field")
        else:
            problems += kubernetes_problems(item, model.openapi_types[fields[key]], where)
    return problems


def _katib_rules(body: dict[str, Any]) -> list[str]:
    """The checks of Katib's validating webhook (pkg/webhook/v1beta1/experiment/validator/
    validator.go) that a body built here could fail, so they fail before anything is sent."""
    spec, problems = body["spec"], []
    name = body["metadata"]["name"]
    if not _NAME.match(name) or len(name) > MAX_NAME:
        problems.append(f"metadata.name {name!r}: a lower-case DNS label of at most 40 characters")
    trials, parallel = spec.get("maxTrialCount", 0), spec.get("parallelTrialCount", 0)
    if not 0 < parallel <= trials or not 0 <= spec.get("maxFailedTrialCount", 0) <= trials:
        problems.append("parallelTrialCount and maxFailedTrialCount must not exceed maxTrialCount")
    template = spec["trialTemplate"]
    used = set(_TEMPLATE_PARAM.findall(json.dumps(template["trialSpec"])))
    declared = {p["name"]: p["reference"] for p in template["trialParameters"]}
    names = {p["name"] for p in spec["parameters"]}
    if used != set(declared):
        problems.append(f"trial parameters {sorted(declared)} != template's {sorted(used)}")
    for param, ref in declared.items():
        if ref not in names and not ref.startswith("${trialSpec."):
            problems.append(f"trial parameter {param}: no search parameter {ref}")
    for fmt in spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]:
        if re.compile(fmt).groups < 2:
            problems.append(f"metricsFormat {fmt!r}: needs a name group and a value group")
    return problems


def validate_experiment(body: dict[str, Any]) -> None:
    """Check ``body`` against Katib's API models (``kubeflow_katib_api`` 0.19) and its trial
    Job against the ``kubernetes`` models: unknown fields and wrong types fail. Katib's CRD
    keeps unknown fields (``x-kubernetes-preserve-unknown-fields``) and its controller ignores
    them, so a typo would otherwise be a setting silently not applied."""
    from kubeflow_katib_api.models import V1beta1Experiment

    try:
        kept = V1beta1Experiment.from_dict(body)
    except ValidationError as exc:
        errors = [
            f"{exc.title}.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e['input']!r})"
            for e in exc.errors()
        ]
        raise KatibError(f"invalid Katib Experiment body: {'; '.join(errors)}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a list where a mapping belongs
        raise KatibError(f"invalid Katib Experiment body: {exc}") from None
    assert kept is not None
    unknown = _dropped(body, kept.to_dict())
    if unknown:
        raise KatibError(f"Katib Experiment body has fields Katib does not know: {unknown}")
    job = body["spec"]["trialTemplate"]["trialSpec"]
    problems = kubernetes_problems(job, "V1Job", "spec.trialTemplate.trialSpec")
    problems += _katib_rules(body)
    if problems:
        raise KatibError(f"invalid Katib Experiment body: {'; '.join(problems)}")
