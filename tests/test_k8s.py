"""The Kubernetes manifests and the Dockerfile: render every overlay and check what ships.

Rendering uses ``kubectl kustomize`` on a copy of k8s/ whose secret env files come from the
committed ``*.env.example`` templates, so real ``*.env`` files never reach the output.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
PLACEHOLDER = "CHANGE_ME"
PIPELINE_SECRETS = {
    "ssr-s3-credentials": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"},
    "ssr-mlflow-credentials": {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
    },
    "ssr-wandb-credentials": {"WANDB_API_KEY"},
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "CustomResourceDefinition",
}
SENSITIVE = re.compile(r"PASSWORD|SECRET|KEY|TOKEN", re.IGNORECASE)
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")


def render(overlay: str, tmp: Path) -> list[dict[str, Any]]:
    """Render ``k8s/overlays/<overlay>`` with the example secrets; the parsed objects."""
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("*.env"))
    for example in copy.glob(f"overlays/{overlay}/secrets/*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    out = subprocess.run(
        ["kubectl", "kustomize", str(copy / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def objects(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return render(request.param, tmp_path_factory.mktemp(request.param))


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def test_overlays_exist() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


@needs_kubectl
def test_expected_objects(objects: list[dict[str, Any]]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for expected in [
        ("Namespace", "ssr"),
        ("ServiceAccount", "ssr-pipeline-runner"),
        ("Role", "ssr-pipeline-runner"),
        ("RoleBinding", "ssr-pipeline-runner"),
        ("Deployment", "ssr-mlflow"),
        ("Service", "ssr-mlflow"),
        ("StatefulSet", "ssr-postgres"),
        ("Service", "ssr-postgres"),
        ("NetworkPolicy", "default-deny-ingress"),
        *[("Secret", name) for name in PIPELINE_SECRETS],
    ]:
        assert expected in names, f"missing {expected}"


@needs_kubectl
def test_required_fields_and_namespace(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        meta = obj["metadata"]
        assert meta.get("name"), obj
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{obj['kind']}/{meta['name']} is cluster-scoped"
        else:
            assert meta.get("namespace") == "ssr", f"{obj['kind']}/{meta['name']} has no namespace"


@needs_kubectl
def test_pipeline_secrets_have_the_keys_the_pipeline_mounts(objects: list[dict[str, Any]]) -> None:
    secrets = {s["metadata"]["name"]: s for s in by_kind(objects, "Secret")}
    for name, keys in PIPELINE_SECRETS.items():
        data = secrets[name].get("data", {}) | secrets[name].get("stringData", {})
        assert set(data) == keys, f"{name}: keys {sorted(data)}"


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


@needs_kubectl
def test_no_plaintext_secret_values(objects: list[dict[str, Any]]) -> None:
    for secret in by_kind(objects, "Secret"):
        for key, value in _decoded(secret).items():
            where = f"Secret {secret['metadata']['name']} key {key}"
            if SENSITIVE.search(key):
                assert value == PLACEHOLDER, f"{where}: not a placeholder"
            creds = re.match(r"^\w+://([^:/@]+):([^@]*)@", value)
            if creds:
                assert creds[2] == PLACEHOLDER, f"{where}: URI carries a password"


@needs_kubectl
def test_sensitive_env_comes_from_secrets(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] not in WORKLOADS:
            continue
        for c in containers(obj):
            for env in c.get("env", []):
                if SENSITIVE.search(env["name"]) and "value" in env:
                    pytest.fail(f"{obj['metadata']['name']}/{c['name']}: literal {env['name']}")
                ref = env.get("valueFrom", {})
                if SENSITIVE.search(env["name"]) and "valueFrom" in env:
                    assert "secretKeyRef" in ref, f"{env['name']} not from a Secret"
    for cm in by_kind(objects, "ConfigMap"):
        for key in cm.get("data", {}):
            assert not SENSITIVE.search(key), f"ConfigMap {cm['metadata']['name']} holds {key}"


@needs_kubectl
def test_containers_have_resources_probes_and_security(objects: list[dict[str, Any]]) -> None:
    workloads = [o for o in objects if o["kind"] in WORKLOADS]
    assert workloads
    for obj in workloads:
        spec = pod_spec(obj)
        name = obj["metadata"]["name"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        long_running = obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
        for c in containers(obj):
            where = f"{name}/{c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}: {part}"
            if long_running and c in spec["containers"]:
                assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: probes"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities"
            assert sc.get("privileged") is not True, where
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: writable root fs"
            assert (c.get("securityContext", {}).get("runAsUser") or pod_sc.get("runAsUser")) != 0


@needs_kubectl
def test_rbac_is_least_privilege(objects: list[dict[str, Any]]) -> None:
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    for role in by_kind(objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"wildcard {field} in {role['metadata']}"
            if "secrets" in rule["resources"]:
                assert rule.get("resourceNames"), "secrets must be named"
                assert set(rule["verbs"]) <= {"get"}
    runner = next(
        r for r in by_kind(objects, "Role") if r["metadata"]["name"] == "ssr-pipeline-runner"
    )
    readable = {
        n
        for rule in runner["rules"]
        if "secrets" in rule["resources"]
        for n in rule["resourceNames"]
    }
    assert set(PIPELINE_SECRETS) <= readable
    assert "ssr-mlflow-server" not in readable and "ssr-postgres-credentials" not in readable
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        for subject in binding["subjects"]:
            assert subject.get("namespace", "ssr") == "ssr"


@needs_kubectl
def test_network_policies(objects: list[dict[str, Any]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objects, "NetworkPolicy")}
    deny = policies["default-deny-ingress"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    postgres = [
        s
        for s in policies.values()
        if s["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == "ssr-postgres"
    ]
    assert postgres, "no policy admits MLflow to PostgreSQL"
    sources = [src for s in postgres for rule in s["ingress"] for src in rule["from"]]
    assert sources == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ssr-mlflow"}}}]


@needs_kubectl
def test_mlflow_server_settings(objects: list[dict[str, Any]]) -> None:
    mlflow = next(
        o for o in by_kind(objects, "Deployment") if o["metadata"]["name"] == "ssr-mlflow"
    )
    c = pod_spec(mlflow)["containers"][0]
    script = " ".join(c.get("command", []) + c.get("args", []))
    assert "--app-name basic-auth" in script
    env = {e["name"]: e for e in c["env"]}
    assert (
        env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "ssr-mlflow-server"
    )
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    assert "MLFLOW_S3_ENDPOINT_URL" in env
    config = next(
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"] == "ssr-mlflow-config"
    )
    assert config["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


def test_env_templates_hold_only_placeholders() -> None:
    examples = sorted(K8S.glob("overlays/*/secrets/*.env.example"))
    assert examples
    for path in examples:
        for line in path.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
            if SENSITIVE.search(key):
                assert value == PLACEHOLDER, f"{path.name}: {key}"


def test_real_env_files_are_git_ignored(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    probe = "k8s/overlays/production/secrets/s3.env"
    out = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO, check=False)
    assert out.returncode == 0, f"{probe} would be committed"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(REPO / ".venv/bin/hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed")
    out = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "docker/Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_ignores_are_explained() -> None:
    text = (REPO / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    for rule in config.get("ignored", []):
        assert re.search(rf"#\s*{rule}\b", text), f"{rule} ignored without a reason"


def test_dockerignore_keeps_local_state_out() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    # An allow-list: everything is excluded first, then only the build inputs come back.
    assert rules[0] == "*"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert "docker/wheelhouse" in allowed
    for local in ("data", "checkpoints", ".venv", "mlflow.db", "wandb", "build", ".git"):
        assert local not in allowed
