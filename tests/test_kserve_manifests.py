"""The KServe manifests (k8s/kserve): rendered with ``kubectl kustomize``, checked against KServe's
CRD schema, held to today's Deployment of the champion (k8s/serving: pod security, probes,
resources, secrets by reference) and to what Knative Serving accepts in a revision's pod.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_k8s import PIPELINE_SECRETS, PROFILE_NAMESPACE, SENSITIVE, by_kind, containers, render
from test_serving_k8s import MLFLOW_SECRET, SERVING, kustomize, one, serve_args

from ssr.cluster.crd_schema import API_VERSION, validate_inference_service
from ssr.config import load_config

REPO = Path(__file__).resolve().parents[1]
KSERVE = REPO / "k8s" / "kserve"
NAME = "ssr-emg"
POD_LABEL = {"serving.kserve.io/inferenceservice": NAME}  # KServe's predictor pod label
QUEUE_PROXY_PORT = 8012  # Knative's queue-proxy, in front of the server in every revision pod

# What Knative Serving accepts in a revision's pod with its default features: knative.dev/serving
# v0.48.1 (the version KServe's go.mod requires), pkg/apis/serving/fieldmask.go (PodSpecMask,
# ContainerMask, SecurityContextMask, ContainerPortMask; PodSecurityContextMask allows nothing
# while kubernetes.podspec-securitycontext is off) and k8s_validation.go (one port, its name).
KNATIVE_POD = {"serviceAccountName", "containers", "volumes", "imagePullSecrets"}
KNATIVE_POD |= {"enableServiceLinks", "automountServiceAccountToken"}  # the latter: false only
KNATIVE_CONTAINER = {
    "name",
    "args",
    "command",
    "env",
    "workingDir",
    "envFrom",
    "image",
    "imagePullPolicy",
    "livenessProbe",
    "ports",
    "readinessProbe",
    "resources",
    "securityContext",
    "startupProbe",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "volumeMounts",
}
KNATIVE_SECURITY = {"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup"}
KNATIVE_SECURITY |= {"runAsNonRoot", "allowPrivilegeEscalation", "seccompProfile", "privileged"}
KNATIVE_PORT_NAMES = {"", "http1", "h2c"}
# KServe's component extension (pkg/apis/serving/v1beta1/component.go), beside the pod spec.
KSERVE_EXTENSION = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "timeout"}
KSERVE_EXTENSION |= {"containerConcurrency", "canaryTrafficPercent", "labels", "annotations"}


@pytest.fixture(scope="module")
def kserve() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return kustomize(KSERVE)


@pytest.fixture(scope="module")
def serving() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return kustomize(SERVING)


@pytest.fixture(scope="module")
def isvc(kserve: list[dict[str, Any]]) -> dict[str, Any]:
    return one(kserve, "InferenceService", NAME)


def predictor_container(isvc: dict[str, Any]) -> dict[str, Any]:
    (container,) = isvc["spec"]["predictor"]["containers"]
    return container  # type: ignore[no-any-return]


def deployment_container(serving: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = containers(one(serving, "Deployment", "ssr-serve"))
    return container


def test_objects_namespace_and_schema(kserve: list[dict[str, Any]]) -> None:
    assert {(o["kind"], o["metadata"]["name"]) for o in kserve} == {
        ("InferenceService", NAME),
        ("NetworkPolicy", "ssr-emg-predictor-from-knative"),
        ("NetworkPolicy", "ssr-emg-predictor-from-clients"),
    }
    for obj in kserve:
        assert obj["metadata"]["namespace"] == PROFILE_NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ssr"
    isvc = one(kserve, "InferenceService", NAME)
    assert isvc["apiVersion"] == API_VERSION
    validate_inference_service(isvc)  # KServe's CRD schema, as the API server would check it


def test_the_contract(isvc: dict[str, Any], serving: list[dict[str, Any]]) -> None:
    meta = isvc["metadata"]
    assert meta["labels"]["ssr.io/role"] == "serve"
    assert meta["annotations"] == {
        "serving.kserve.io/deploymentMode": "Serverless",
        "serving.kserve.io/enable-tag-routing": "true",
        "sidecar.istio.io/inject": "true",
    }
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] == 1
    assert "canaryTrafficPercent" not in predictor  # the deploy step sets it for a rollout
    container = predictor_container(isvc)
    assert container["name"] == "kserve-container"
    assert container["image"] == deployment_container(serving)["image"]  # the serve image
    assert container["args"] == ["--host", "0.0.0.0", "--port", "8080"]
    args = serve_args(container["args"])
    (port,) = container["ports"]
    assert args.host == "0.0.0.0" and args.port == port["containerPort"] == 8080
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SSR_MODEL_URI"] == f"models:/{load_config(None).registry.model_name}@champion"


def test_knative_accepts_the_predictor_pod(isvc: dict[str, Any]) -> None:
    """Pod fields Knative refuses make KServe's Knative Service fail; none is used."""
    predictor = isvc["spec"]["predictor"]
    pod_fields = set(predictor) - KSERVE_EXTENSION
    assert pod_fields <= KNATIVE_POD, pod_fields - KNATIVE_POD
    assert "securityContext" not in predictor  # pod level: refused by default
    assert predictor["automountServiceAccountToken"] is False
    container = predictor_container(isvc)
    assert set(container) <= KNATIVE_CONTAINER, set(container) - KNATIVE_CONTAINER
    assert set(container["securityContext"]) <= KNATIVE_SECURITY
    (port,) = container["ports"]
    assert set(port) <= {"name", "containerPort", "protocol"}
    assert port.get("name", "") in KNATIVE_PORT_NAMES and port.get("protocol", "TCP") == "TCP"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # the startup probe is not rewritten by Knative: a number, the one port
        assert container[probe]["httpGet"]["port"] == port["containerPort"], probe
    volumes = predictor["volumes"]
    assert all(set(v) == {"name", "emptyDir"} for v in volumes)  # emptyDir: on by default


def test_same_pod_security_as_the_deployment(
    isvc: dict[str, Any], serving: list[dict[str, Any]]
) -> None:
    """Knative takes no pod-level securityContext: the Deployment's pod settings sit on the
    container, which also keeps every container setting of the Deployment."""
    deployment = one(serving, "Deployment", "ssr-serve")
    pod = deployment["spec"]["template"]["spec"]
    container = predictor_container(isvc)
    security = container["securityContext"]
    pod_level = {k: v for k, v in pod["securityContext"].items() if k != "fsGroup"}
    assert pod_level.items() <= security.items()
    assert deployment_container(serving)["securityContext"].items() <= security.items()
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert isvc["spec"]["predictor"]["volumes"] == pod["volumes"]  # /tmp, size-limited
    assert container["volumeMounts"] == deployment_container(serving)["volumeMounts"]


def test_same_probes_and_resources_as_the_deployment(
    isvc: dict[str, Any], serving: list[dict[str, Any]]
) -> None:
    reference = deployment_container(serving)
    container = predictor_container(isvc)
    assert container["resources"] == reference["resources"]
    named = {p["name"]: p["containerPort"] for p in reference["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        ours, theirs = dict(container[probe]), dict(reference[probe])
        ours_get, theirs_get = ours.pop("httpGet"), theirs.pop("httpGet")
        assert ours == theirs, probe  # periods and thresholds
        assert ours_get["path"] == theirs_get["path"] == "/health"
        assert ours_get["port"] == named[theirs_get["port"]]


def test_same_settings_and_secrets_as_the_deployment(
    isvc: dict[str, Any], serving: list[dict[str, Any]]
) -> None:
    """The ConfigMap's settings become env values (a change is a new revision); credentials
    come from the pipeline's secret by reference, never as values."""
    container = predictor_container(isvc)
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    config = one(serving, "ConfigMap", "ssr-serve-config")["data"]
    assert values == config
    refs = {}
    for env in container["env"]:
        assert "value" not in env or not SENSITIVE.search(env["name"]), env["name"]
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[env["name"]] = (ref["name"], ref["key"])
    assert refs == {key: (MLFLOW_SECRET, key) for key in PIPELINE_SECRETS[MLFLOW_SECRET]}
    reference = deployment_container(serving)
    assert [e for e in container["env"] if "valueFrom" in e] == reference["env"]
    assert "envFrom" not in container


def _ports(rule: dict[str, Any]) -> list[int]:
    return [p["port"] for p in rule["ports"]]


def _namespaces(rule: dict[str, Any]) -> list[str]:
    return [
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for s in rule["from"]
    ]


def test_network_policies_admit_only_what_knative_needs(kserve: list[dict[str, Any]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(kserve, "NetworkPolicy")}
    for spec in policies.values():
        assert spec["podSelector"] == {"matchLabels": POD_LABEL}
        assert spec["policyTypes"] == ["Ingress"]
    requests, metrics = policies["ssr-emg-predictor-from-knative"]["ingress"]
    assert sorted(_namespaces(requests)) == ["istio-system", "knative-serving"]
    assert _ports(requests) == [QUEUE_PROXY_PORT]
    assert _namespaces(metrics) == ["knative-serving"] and _ports(metrics) == [9090]
    (clients,) = policies["ssr-emg-predictor-from-clients"]["ingress"]
    assert _ports(clients) == [QUEUE_PROXY_PORT]
    assert clients["from"][0] == {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"ssr.io/role": "serve-client"}},
    }
    # the rest only from this namespace (no namespaceSelector)
    assert all(set(src) == {"podSelector"} for src in clients["from"][1:])
    # nothing reaches the server's own port past the queue-proxy
    ports = [p for spec in policies.values() for rule in spec["ingress"] for p in _ports(rule)]
    assert 8080 not in ports


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return render("profile", tmp_path_factory.mktemp("profile"))


def test_mlflow_admits_the_predictor_pods(
    profile: list[dict[str, Any]], kserve: list[dict[str, Any]]
) -> None:
    """The profile overlay lets the predictor pods of the InferenceService's namespace (the
    profile namespace, the same default in both kustomizations) read the registry."""
    policy = one(profile, "NetworkPolicy", "ssr-mlflow-from-kserve")
    assert policy["metadata"]["namespace"] == "ssr"
    mlflow = one(profile, "Service", "ssr-mlflow")
    assert policy["spec"]["podSelector"]["matchLabels"] == mlflow["spec"]["selector"]
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    namespace = one(kserve, "InferenceService", NAME)["metadata"]["namespace"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
    assert source["podSelector"]["matchLabels"] == POD_LABEL
    assert _ports(rule) == [p["port"] for p in mlflow["spec"]["ports"]]
    # the secret the predictor reads is in that namespace
    assert (MLFLOW_SECRET, namespace) in {
        (s["metadata"]["name"], s["metadata"]["namespace"]) for s in by_kind(profile, "Secret")
    }


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_namespace_is_set_in_one_place(tmp_path: Path) -> None:
    copy = tmp_path / "kserve"
    shutil.copytree(KSERVE, copy)
    kustomization = copy / "kustomization.yaml"
    text = kustomization.read_text()
    assert f"namespace: {PROFILE_NAMESPACE}\n" in text
    kustomization.write_text(text.replace(f"namespace: {PROFILE_NAMESPACE}\n", "namespace: team\n"))
    objects = kustomize(copy)
    assert {o["metadata"]["namespace"] for o in objects} == {"team"}
    assert PROFILE_NAMESPACE not in yaml.safe_dump_all(objects)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")
def test_make_k8s_render_includes_kserve(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not on PATH")
    if "k8s/kserve" not in (REPO / "Makefile").read_text():
        pytest.skip("the Makefile does not render k8s/kserve yet")
    out = subprocess.run(
        ["make", "-s", "k8s-render", "K8S_OVERLAYS=dev", f"K8S_RENDER_DIR={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all((tmp_path / "kserve.yaml").read_text()) if d]
    validate_inference_service(one(rendered, "InferenceService", NAME))
