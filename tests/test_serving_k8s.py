"""The model server's manifests (k8s/serving) and image (docker/Dockerfile, target serve).

The manifests are rendered with ``kubectl kustomize`` and held to what the other pods do (the
tracking server of the dev overlay, rendered the same way as tests/test_k8s.py does): pod
security, probes, resources, secrets by reference. The Dockerfile's serve stage is parsed, not
built (no container engine is needed for these tests).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_k8s import PIPELINE_SECRETS, SENSITIVE, by_kind, containers, pod_spec, render

from ssr.config import load_config
from ssr.registry.register import SERVING_REQUIREMENTS, serving_distributions
from ssr.serve_options import add_arguments

REPO = Path(__file__).resolve().parents[1]
SERVING = REPO / "k8s" / "serving"
DOCKERFILE = REPO / "docker" / "Dockerfile"
NAME = "ssr-serve"
MLFLOW_SECRET = "ssr-mlflow-credentials"

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH")


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def serving() -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return kustomize(SERVING)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH")
    return render("dev", tmp_path_factory.mktemp("dev"))


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def serve_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed as the serve image's entry point (``ssr serve``'s options) parses it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def _version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'^version = "(.+)"', text, re.M)[1]


@needs_kubectl
def test_serving_objects_and_namespace(serving: list[dict[str, Any]]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in serving}
    assert names == {
        ("ConfigMap", "ssr-serve-config"),
        ("Service", NAME),
        ("Deployment", NAME),
        ("NetworkPolicy", "ssr-mlflow-from-serve"),
        ("NetworkPolicy", "ssr-serve-from-clients"),
    }
    for obj in serving:
        assert obj["metadata"]["namespace"] == "ssr", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ssr"
    # no Secret of its own: the existing ones are referenced by name
    assert not by_kind(serving, "Secret")


@needs_kubectl
def test_same_pod_security_as_the_tracking_server(
    serving: list[dict[str, Any]], dev: list[dict[str, Any]]
) -> None:
    serve = one(serving, "Deployment", NAME)
    mlflow = one(dev, "Deployment", "ssr-mlflow")
    spec, reference = pod_spec(serve), pod_spec(mlflow)
    assert spec["securityContext"] == reference["securityContext"]
    assert spec["automountServiceAccountToken"] is False
    (container,) = containers(serve)
    assert container["securityContext"] == containers(mlflow)[0]["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the model is downloaded to /tmp: a size-limited emptyDir, as MLflow's
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in spec["volumes"]}[mounts["/tmp"]]
    assert volume["emptyDir"]["sizeLimit"]


@needs_kubectl
def test_probes_resources_ports_and_service(serving: list[dict[str, Any]]) -> None:
    serve = one(serving, "Deployment", NAME)
    (container,) = containers(serve)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] == "http", probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    service = one(serving, "Service", NAME)
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    labels = serve["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert serve["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # the container's arguments are `ssr serve` arguments (the image's entrypoint)
    args = serve_args(container["args"])
    assert args.host == "0.0.0.0" and args.port == ports["http"]
    assert container["image"] == f"localhost/ssr/ssr-serve:{_version()}"


@needs_kubectl
def test_credentials_come_from_the_existing_secrets(
    serving: list[dict[str, Any]], dev: list[dict[str, Any]]
) -> None:
    serve = one(serving, "Deployment", NAME)
    (container,) = containers(serve)
    refs = {}
    for env in container["env"]:
        assert "value" not in env or not SENSITIVE.search(env["name"]), env["name"]
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[env["name"]] = (ref["name"], ref["key"])
    assert refs == {key: (MLFLOW_SECRET, key) for key in PIPELINE_SECRETS[MLFLOW_SECRET]}
    # the overlays that put the pipeline's secrets in ssr create this one there
    secret = one(dev, "Secret", MLFLOW_SECRET)
    assert secret["metadata"]["namespace"] == "ssr"
    assert set(secret.get("data", {}) | secret.get("stringData", {})) == set(refs)
    config = one(serving, "ConfigMap", "ssr-serve-config")["data"]
    assert not any(SENSITIVE.search(key) for key in config)
    name = load_config(None).registry.model_name
    assert config["SSR_MODEL_URI"] == f"models:/{name}@champion"
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["ssr-serve-config"]


@needs_kubectl
def test_network_policies_open_only_what_serving_needs(
    serving: list[dict[str, Any]], dev: list[dict[str, Any]]
) -> None:
    mlflow_service = one(dev, "Service", "ssr-mlflow")
    to_mlflow = one(serving, "NetworkPolicy", "ssr-mlflow-from-serve")["spec"]
    assert to_mlflow["podSelector"]["matchLabels"] == mlflow_service["spec"]["selector"]
    (rule,) = to_mlflow["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": NAME}}}]
    assert [p["port"] for p in rule["ports"]] == [
        p["port"] for p in mlflow_service["spec"]["ports"]
    ]
    to_serve = one(serving, "NetworkPolicy", "ssr-serve-from-clients")["spec"]
    assert to_serve["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": NAME}
    (rule,) = to_serve["ingress"]
    assert [p["port"] for p in rule["ports"]] == [8080]
    # the namespace still denies everything else
    assert one(dev, "NetworkPolicy", "default-deny-ingress")["spec"]["podSelector"] == {}


@needs_kubectl
def test_make_k8s_render_includes_serving(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not on PATH")
    out = subprocess.run(
        ["make", "-s", "k8s-render", "K8S_OVERLAYS=dev", f"K8S_RENDER_DIR={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all((tmp_path / "serving.yaml").read_text()) if d]
    assert ("Deployment", NAME) in {(o["kind"], o["metadata"]["name"]) for o in rendered}
    assert (tmp_path / "dev.yaml").is_file()


# ---- the serve image -----------------------------------------------------------------------


def stages(text: str) -> dict[str, list[str]]:
    """Dockerfile stages: name -> instructions (continuation lines joined, comments dropped)."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
    )
    out: dict[str, list[str]] = {}
    current = None
    for line in joined.splitlines():
        line = line.strip()
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            current = match[2] or match[1]
            out[current] = [line]
        elif line and current:
            out[current].append(line)
    return out


def test_dockerfile_serve_stage_holds_only_what_inference_needs() -> None:
    found = stages(DOCKERFILE.read_text())
    serve, builder = found["serve"], found["serve-builder"]
    assert serve[0].split()[1] == "final-base"
    copies = [ln for ln in serve if ln.startswith("COPY")]
    assert copies == ["COPY --from=serve-builder /opt/venv /opt/venv"], copies
    assert "USER 1000:1000" in serve
    assert "EXPOSE 8080" in serve
    entry = next(ln for ln in serve if ln.startswith("ENTRYPOINT"))
    assert json.loads(entry.split(None, 1)[1]) == ["python3", "-m", "ssr.serving"]
    cmd = next(ln for ln in serve if ln.startswith("CMD"))
    args = serve_args(json.loads(cmd.split(None, 1)[1]))
    assert args.host == "0.0.0.0" and args.port == 8080
    # the builder installs the model's requirements file (pinned by constraints.txt), CPU
    # torch from the wheelhouse and ssr itself without its training dependencies
    text = " ".join(builder)
    rel = SERVING_REQUIREMENTS.relative_to(REPO).as_posix()
    assert f"COPY {rel} " in text
    assert "-c constraints.txt -r /tmp/serving-requirements.txt" in text
    assert "--no-index --find-links /wheelhouse" in text
    assert "pip install --no-deps ." in text
    assert builder[0].split()[1] == "venv"  # not the full builder with the training stack
    # nothing left behind in the copied venv's build inputs
    assert "rm -rf /wheelhouse" in text


def test_dockerfile_other_targets_still_there() -> None:
    found = stages(DOCKERFILE.read_text())
    assert {"builder", "mlflow-builder", "mlflow-server", "runtime", "serve"} <= set(found)
    # the default target (the last stage) stays the training/CLI image
    assert list(found)[-1] == "runtime"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(REPO / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed")
    out = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


SANDBOX = """\
import importlib.abc, importlib.machinery, runpy, sys
blocked = set(sys.argv[1].split(","))

class Absent(importlib.abc.MetaPathFinder):  # the path finder, minus the blocked packages
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)

    def find_distributions(self, *args, **kwargs):  # importlib.metadata asks the finders
        return importlib.machinery.PathFinder.find_distributions(*args, **kwargs)

    def invalidate_caches(self):
        importlib.machinery.PathFinder.invalidate_caches()

sys.meta_path[:] = [
    Absent() if f is importlib.machinery.PathFinder else f for f in sys.meta_path
]
if sys.argv[2] == "scoring":  # what ssr serve imports once the model passed its check
    from ssr.serving import scoring_command
    argv, env = scoring_command(sys.argv[3], "127.0.0.1", 8080)
    print(argv)
    sys.exit(0)
sys.argv = ["ssr.serving", *sys.argv[2:]]
runpy.run_module("ssr.serving", run_name="__main__")
"""


def _serving_closure() -> set[str]:
    """The serving distributions and, recursively, what they require (no extras)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = list(serving_distributions())
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_serve_entry_point_imports_only_the_serving_packages(tmp_path: Path) -> None:
    """The serve image holds only the serving requirements (and what they require): with every
    other installed package made unimportable, the entry point starts, refuses a foreign model,
    and gets as far as MLflow's scoring server command."""
    from packaging.utils import canonicalize_name

    allowed = _serving_closure()
    blocked = sorted(
        top
        for top, dists in importlib.metadata.packages_distributions().items()
        if top.isidentifier()
        and top not in ("ssr", "_distutils_hack")
        and not any(canonicalize_name(d) in allowed for d in dists)
    )
    assert {"tqdm", "wandb", "boto3", "matplotlib", "kfp", "sklearn"} <= set(blocked)
    run = [sys.executable, "-c", SANDBOX, ",".join(blocked)]
    kwargs = {"capture_output": True, "text": True, "timeout": 300, "cwd": tmp_path}
    out = subprocess.run([*run, "--help"], **kwargs)
    assert out.returncode == 0 and "--model" in out.stdout, out.stderr[-2000:]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n"
    )
    out = subprocess.run([*run, "--model", str(tmp_path / "foreign"), "--port", "1"], **kwargs)
    assert out.returncode == 2 and "loader_module" in out.stderr, out.stderr[-2000:]
    out = subprocess.run([*run, "scoring", str(tmp_path / "foreign")], **kwargs)
    assert out.returncode == 0 and "uvicorn" in out.stdout, out.stderr[-2000:]
