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
SERVER_NAMESPACE = "ssr"
# The profile overlay's one namespace setting (k8s/overlays/profile/pipeline/kustomization.yaml).
PROFILE_NAMESPACE = "kubeflow-user-example-com"
# Where each overlay puts the pipeline's side: its secrets, service account and Role.
PIPELINE_NAMESPACE = {"profile": PROFILE_NAMESPACE}
PIPELINE_OBJECTS = {"ServiceAccount", "Role", "RoleBinding"}
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


def render(overlay: str, tmp: Path, edit: dict[str, tuple[str, str]] | None = None) -> list[dict]:
    """Render ``k8s/overlays/<overlay>`` with the example secrets; the parsed objects.

    ``edit`` maps a file below k8s/ to an (old, new) text replacement made in the copy first.
    """
    copy = tmp / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("*.env"))
    for example in copy.glob(f"overlays/{overlay}/**/secrets/*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    for name, (old, new) in (edit or {}).items():
        path = copy / name
        assert old in path.read_text(), f"{name}: {old!r} not found"
        path.write_text(path.read_text().replace(old, new))
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
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def objects(overlay: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return render(overlay, tmp_path_factory.mktemp(overlay))


def expected_namespace(overlay: str, obj: dict[str, Any]) -> str:
    """ssr for the tracking server's side; the pipeline's side where the overlay puts it."""
    pipeline_side = obj["kind"] in PIPELINE_OBJECTS or (
        obj["kind"] == "Secret" and obj["metadata"]["name"] in PIPELINE_SECRETS
    )
    if pipeline_side and obj["metadata"].get("namespace") != SERVER_NAMESPACE:
        return PIPELINE_NAMESPACE.get(overlay, SERVER_NAMESPACE)
    return SERVER_NAMESPACE


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
    assert {"dev", "production", "profile"} <= set(OVERLAYS)


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
def test_required_fields_and_namespace(overlay: str, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        meta = obj["metadata"]
        assert meta.get("name"), obj
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{obj['kind']}/{meta['name']} is cluster-scoped"
        else:
            want = expected_namespace(overlay, obj)
            assert meta.get("namespace") == want, f"{obj['kind']}/{meta['name']}: not in {want}"


@needs_kubectl
def test_pipeline_secrets_have_the_keys_the_pipeline_mounts(
    overlay: str, objects: list[dict[str, Any]]
) -> None:
    """In the namespace the pipeline's pods run in: a pod reads Secrets only from its own."""
    namespace = PIPELINE_NAMESPACE.get(overlay, SERVER_NAMESPACE)
    secrets = {
        s["metadata"]["name"]: s
        for s in by_kind(objects, "Secret")
        if s["metadata"]["namespace"] == namespace
    }
    for name, keys in PIPELINE_SECRETS.items():
        data = secrets[name].get("data", {}) | secrets[name].get("stringData", {})
        assert set(data) == keys, f"{name}: keys {sorted(data)}"
    # The MLflow server reads its artifact store credentials in its own namespace.
    server = {
        s["metadata"]["name"]
        for s in by_kind(objects, "Secret")
        if s["metadata"]["namespace"] == SERVER_NAMESPACE
    }
    assert {"ssr-s3-credentials", "ssr-mlflow-server", "ssr-postgres-credentials"} <= server


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
def test_rbac_is_least_privilege(overlay: str, objects: list[dict[str, Any]]) -> None:
    # Cluster-wide: only reading Kubeflow Trainer's runtimes, bound to the pipeline's account.
    (cluster_role,) = by_kind(objects, "ClusterRole")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["trainer.kubeflow.org"],
            "resources": ["clustertrainingruntimes"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    (cluster_binding,) = by_kind(objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert cluster_binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "ssr-pipeline-runner",
            "namespace": PIPELINE_NAMESPACE.get(overlay, SERVER_NAMESPACE),
        }
    ]
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
    # Multi-node training: the run's TrainJobs (no patch/update) and node 0's log, read only.
    verbs = {
        (group, resource): set(rule["verbs"])
        for rule in runner["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert verbs[("trainer.kubeflow.org", "trainjobs")] == {
        "create",
        "get",
        "list",
        "watch",
        "delete",
    }
    assert verbs[("", "pods")] == verbs[("", "pods/log")] == {"get", "list", "watch"}
    # The hyper-parameter search: the run's Katib Experiment (no patch/update), nothing of the
    # trials or Jobs Katib makes from it.
    assert verbs[("kubeflow.org", "experiments")] == {"create", "get", "list", "watch", "delete"}
    assert not {("kubeflow.org", "trials"), ("batch", "jobs")} & verbs.keys()
    # The deploy step rolls the InferenceService out: read and update, no create or delete.
    assert verbs[("serving.kserve.io", "inferenceservices")] == {
        "get",
        "list",
        "watch",
        "update",
        "patch",
    }
    assert ("trainer.kubeflow.org", "trainingruntimes") not in verbs
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        for subject in binding["subjects"]:
            assert subject.get("namespace") == binding["metadata"]["namespace"]


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


def _admits(policy: dict[str, Any], namespace: str, label: str, value: str = "true") -> bool:
    """Whether a NetworkPolicy's ingress admits pods labelled ``label=value`` of ``namespace``."""
    for rule in policy["spec"].get("ingress", []):
        for src in rule.get("from", []):
            ns = src.get("namespaceSelector", {}).get("matchLabels", {})
            pods = src.get("podSelector", {}).get("matchLabels", {})
            if ns.get("kubernetes.io/metadata.name") == namespace and pods.get(label) == value:
                return True
    return False


def _mlflow_policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p
        for p in by_kind(objects, "NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
        == "ssr-mlflow"
    ]


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return render("profile", tmp_path_factory.mktemp("profile"))


def test_profile_overlay_splits_the_namespaces(profile: list[dict[str, Any]]) -> None:
    where = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in profile}
    for name in PIPELINE_SECRETS:
        assert ("Secret", name, PROFILE_NAMESPACE) in where, name
    for kind in PIPELINE_OBJECTS:
        assert (kind, "ssr-pipeline-runner", PROFILE_NAMESPACE) in where, kind
    for kind, name in [
        ("Deployment", "ssr-mlflow"),
        ("Service", "ssr-mlflow"),
        ("StatefulSet", "ssr-postgres"),
        ("Secret", "ssr-mlflow-server"),
        ("Secret", "ssr-postgres-credentials"),
        ("Secret", "ssr-s3-credentials"),
    ]:
        assert (kind, name, SERVER_NAMESPACE) in where, (kind, name)
    # Nothing of the tracking server in the profile namespace, no pipeline secret left in ssr.
    in_profile = {(k, n) for k, n, ns in where if ns == PROFILE_NAMESPACE}
    assert in_profile == {("Secret", n) for n in PIPELINE_SECRETS} | {
        (k, "ssr-pipeline-runner") for k in PIPELINE_OBJECTS
    }


def test_profile_namespace_is_not_relabelled(profile: list[dict[str, Any]]) -> None:
    """Kubeflow owns the profile namespace; KFP pods do not meet Pod Security restricted."""
    namespaces = {o["metadata"]["name"]: o for o in by_kind(profile, "Namespace")}
    assert set(namespaces) == {SERVER_NAMESPACE}
    labels = namespaces[SERVER_NAMESPACE]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in profile:
        if obj["metadata"].get("namespace") == PROFILE_NAMESPACE:
            assert not any(
                k.startswith("pod-security.kubernetes.io/")
                for k in obj["metadata"].get("labels", {})
            )


def test_profile_pipeline_pods_reach_mlflow(profile: list[dict[str, Any]]) -> None:
    policies = _mlflow_policies(profile)
    assert all(p["metadata"]["namespace"] == SERVER_NAMESPACE for p in policies)
    admitting = [
        p for p in policies if _admits(p, PROFILE_NAMESPACE, "pipelines.kubeflow.org/v2_component")
    ]
    assert admitting, "no policy admits the profile namespace's KFP pods to MLflow"
    for policy in admitting:
        ports = [port for rule in policy["spec"]["ingress"] for port in rule.get("ports", [])]
        assert ports == [{"protocol": "TCP", "port": 5000}]
    assert any(_admits(p, PROFILE_NAMESPACE, "ssr.io/role", "pipeline") for p in policies)
    assert "PROFILE_NAMESPACE" not in yaml.safe_dump_all(profile)
    # The pipeline's tracking URI names the server's namespace (the pods run elsewhere).
    mlflow = next(
        s for s in by_kind(profile, "Secret") if s["metadata"]["name"] == "ssr-mlflow-credentials"
    )
    assert ".ssr.svc" in _decoded(mlflow)["MLFLOW_TRACKING_URI"]


@needs_kubectl
def test_profile_namespace_is_set_in_one_place(tmp_path: Path) -> None:
    """Changing `namespace:` in profile/pipeline/kustomization.yaml moves the pipeline's side and
    the network policy along."""
    objs = render(
        "profile",
        tmp_path,
        edit={
            "overlays/profile/pipeline/kustomization.yaml": (
                f"namespace: {PROFILE_NAMESPACE}",
                "namespace: team-emg",
            )
        },
    )
    moved = {
        (o["kind"], o["metadata"]["name"])
        for o in objs
        if o["metadata"].get("namespace") == "team-emg"
    }
    assert {("Secret", n) for n in PIPELINE_SECRETS} <= moved
    assert ("ServiceAccount", "ssr-pipeline-runner") in moved
    assert any(
        _admits(p, "team-emg", "pipelines.kubeflow.org/v2_component")
        for p in _mlflow_policies(objs)
    )
    assert any(
        _admits(p, "team-emg", "serving.kserve.io/inferenceservice", "ssr-emg")
        for p in _mlflow_policies(objs)
    )
    assert PROFILE_NAMESPACE not in yaml.safe_dump_all(objs)


@needs_kubectl
def test_make_k8s_render_renders_the_profile_overlay(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not on PATH")
    out = subprocess.run(
        ["make", "-s", "k8s-render", "K8S_OVERLAYS=profile", f"K8S_RENDER_DIR={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    objs = [d for d in yaml.safe_load_all((tmp_path / "profile.yaml").read_text()) if d]
    assert ("Secret", "ssr-s3-credentials", PROFILE_NAMESPACE) in {
        (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs
    }


def test_env_templates_hold_only_placeholders() -> None:
    examples = sorted(K8S.glob("overlays/**/secrets/*.env.example"))
    assert any("profile" in p.parts for p in examples)
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
    for probe in (
        "k8s/overlays/production/secrets/s3.env",
        "k8s/overlays/profile/pipeline/secrets/s3.env",
        "k8s/overlays/profile/server/secrets/mlflow-server.env",
    ):
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
