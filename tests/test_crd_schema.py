"""ssr.cluster.crd_schema (InferenceService bodies against KServe's CRD schema) and the script
that prunes that schema (k8s/kserve/prune_crd_schema.py).

The validator is held to bodies with one known fault each, built from the committed manifest
(k8s/kserve/inferenceservice.yaml, read as is: no kubectl needed), which must pass untouched.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from ssr.cluster.crd_schema import (
    SchemaError,
    inference_service_problems,
    main,
    schema_document,
    validate_inference_service,
)
from ssr.errors import SSRError

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "k8s" / "kserve" / "inferenceservice.yaml"
SCHEMA = REPO / "ssr" / "cluster" / "schemas" / "inferenceservice-v1beta1.json"
SCRIPT = REPO / "k8s" / "kserve" / "prune_crd_schema.py"


@pytest.fixture
def body() -> dict[str, Any]:
    doc = yaml.safe_load(MANIFEST.read_text())
    doc["metadata"]["namespace"] = "team-emg"
    return doc


def container(body: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = body["spec"]["predictor"]["containers"][0]
    return first


def problems_of(body: dict[str, Any]) -> list[str]:
    return inference_service_problems(body)


def test_the_manifest_as_written_validates(body: dict[str, Any]) -> None:
    assert problems_of(body) == []
    validate_inference_service(body)


def test_a_typo_is_an_unknown_field(body: dict[str, Any]) -> None:
    container(body)["imagePullPolicyy"] = "Always"
    body["spec"]["predictor"]["minReplica"] = 1
    assert problems_of(body) == [
        "spec.predictor.containers[0].imagePullPolicyy: unknown field",
        "spec.predictor.minReplica: unknown field",
    ]


def test_wrong_types(body: dict[str, Any]) -> None:
    body["spec"]["predictor"]["minReplicas"] = "1"
    container(body)["ports"][0]["containerPort"] = True
    container(body)["args"] = "--port 8080"
    args, port, replicas = sorted(problems_of(body))
    assert replicas.startswith("spec.predictor.minReplicas: a string")
    assert port.startswith("spec.predictor.containers[0].ports[0].containerPort: a boolean")
    assert args.startswith("spec.predictor.containers[0].args: a string")


def test_int_or_string_and_quantities(body: dict[str, Any]) -> None:
    probe = container(body)["livenessProbe"]["httpGet"]
    limits = container(body)["resources"]["limits"]
    probe["port"], limits["cpu"], limits["memory"] = "http1", 2, "1.5Gi"
    assert problems_of(body) == []
    probe["port"], limits["cpu"] = 80.5, "2 cores"
    port, cpu = sorted(problems_of(body))
    assert port.endswith("httpGet.port: a number (80.5), expected an integer or a string")
    assert "resources.limits[cpu]: '2 cores' does not match" in cpu


@pytest.mark.parametrize("percent", [0, 10, 100])
def test_canary_percent_within_bounds(body: dict[str, Any], percent: int) -> None:
    body["spec"]["predictor"]["canaryTrafficPercent"] = percent
    assert problems_of(body) == []


@pytest.mark.parametrize("percent", [101, -1])
def test_canary_percent_out_of_bounds(body: dict[str, Any], percent: int) -> None:
    body["spec"]["predictor"]["canaryTrafficPercent"] = percent
    assert problems_of(body) == [
        f"spec.predictor.canaryTrafficPercent: {percent} is out of range (0 to 100)"
    ]


def test_required_enum_duplicates_and_formats(body: dict[str, Any]) -> None:
    del container(body)["name"]
    body["spec"]["predictor"]["scaleMetric"] = "qps"
    container(body)["env"].append({"name": "OMP_NUM_THREADS", "value": "2"})
    container(body)["ports"].append({"containerPort": 8080})  # protocol defaults to TCP
    body["spec"]["predictor"]["timeout"] = 2**70
    assert sorted(problems_of(body)) == [
        'spec.predictor.containers[0].env[7]: duplicate entry {"name": "OMP_NUM_THREADS"}',
        "spec.predictor.containers[0].name: required field missing",
        'spec.predictor.containers[0].ports[1]: duplicate entry {"containerPort": 8080, '
        '"protocol": "TCP"}',
        "spec.predictor.scaleMetric: 'qps' is not one of ['cpu', 'memory', 'concurrency', 'rps']",
        f"spec.predictor.timeout: {2**70} is above the maximum {2**63 - 1}",
    ]


def test_replicas_and_deployment_mode(body: dict[str, Any]) -> None:
    body["spec"]["predictor"].update(minReplicas=3, maxReplicas=2)
    body["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "serverless"
    found = problems_of(body)
    assert found[0].startswith("metadata.annotations[serving.kserve.io/deploymentMode]: ")
    assert found[1:] == ["spec.predictor: minReplicas 3 is above maxReplicas 2"]


def test_metadata(body: dict[str, Any]) -> None:
    body["metadata"].update(name="SSR_emg", namespace="Team", resourceVersio="1")
    body["metadata"]["labels"]["ssr.io/model-version"] = "3 (champion)"
    body["metadata"]["annotations"]["bad key!"] = "x"
    body["metadata"]["annotations"]["ssr.io/model-version"] = 3
    assert problems_of(body) == [
        "metadata.resourceVersio: unknown field",
        "metadata.name: 'SSR_emg' is not a valid InferenceService name",
        "metadata.namespace: 'Team' is not a DNS-1123 label",
        "metadata.annotations: 'bad key!' is not a valid key",
        "metadata.annotations[ssr.io/model-version]: an integer (3), expected a string",
        "metadata.labels[ssr.io/model-version]: '3 (champion)' is not a valid label value",
    ]
    body["metadata"] = {"name": "ssr-emg", "resourceVersion": "7", "generation": 2}
    assert problems_of(body) == []


def test_api_version_kind_and_non_objects(body: dict[str, Any]) -> None:
    body.update(apiVersion="serving.kserve.io/v1alpha1", kind="InferenceServices")
    assert [p.split(":")[0] for p in problems_of(body)] == ["apiVersion", "kind"]
    assert problems_of([]) == ["the body is an array ([]), not an object"]  # type: ignore[arg-type]
    body["spec"] = None
    assert "spec: null, expected object" in problems_of(body)


def test_pruned_subtrees_are_refused_not_skipped(body: dict[str, Any]) -> None:
    body["spec"]["predictor"]["sklearn"] = {"storageUri": "s3://bucket/model"}
    body["spec"]["transformer"] = {}
    found = problems_of(body)
    assert [p.split(":")[0] for p in found] == ["spec.predictor.sklearn", "spec.transformer"]
    assert all("pruned" in p for p in found)


def test_status_keeps_unknown_fields_but_checks_known_ones(body: dict[str, Any]) -> None:
    body["status"] = {"url": "http://x", "somethingNew": {"a": 1}, "observedGeneration": 2}
    assert problems_of(body) == []
    body["status"]["observedGeneration"] = "2"
    assert problems_of(body)[0].startswith("status.observedGeneration: a string")


def test_schema_error_is_one_line_naming_the_object(body: dict[str, Any]) -> None:
    body["spec"]["predictor"]["canaryTrafficPercent"] = 101
    container(body)["imagee"] = "x"
    with pytest.raises(SchemaError) as err:
        validate_inference_service(body)
    message = str(err.value)
    assert isinstance(err.value, SSRError)
    assert "\n" not in message
    assert message.startswith("InferenceService team-emg/ssr-emg does not match KServe's v1beta1")
    assert "containers[0].imagee: unknown field; " in message
    assert message.endswith("canaryTrafficPercent: 101 is out of range (0 to 100)")
    assert schema_document()["source"]["commit"][:12] in message


def test_command_line(
    body: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all([{"kind": "ConfigMap"}, body]))
    assert main([str(good)]) == 0
    body["spec"]["predictor"]["canaryTrafficPercent"] = 101
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(body))
    assert main([str(good), str(bad)]) == 1
    assert "error: InferenceService team-emg/ssr-emg" in capsys.readouterr().err
    assert main([str(tmp_path / "good.yaml")]) == 0
    (tmp_path / "none.yaml").write_text("kind: ConfigMap\n")
    assert main([str(tmp_path / "none.yaml")]) == 1  # nothing checked is not a pass


# ---- the pruned schema and its script --------------------------------------------------------


def prune_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prune_crd_schema", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stubs(node: Any, path: str = "") -> list[str]:
    """Dotted paths of the pruned stubs in a schema."""
    if not isinstance(node, dict):
        return []
    if node.get("x-ssr-pruned"):
        return [path]
    found = []
    for key, child in node.get("properties", {}).items():
        found += stubs(child, f"{path}.{key}" if path else key)
    for key in ("items", "additionalProperties"):
        found += stubs(node.get(key), path)
    return found


def test_committed_schema_is_what_the_script_writes() -> None:
    script = prune_script()
    text = SCHEMA.read_text()
    doc = json.loads(text)
    assert script.dumps(doc) == text  # canonical form: sorted keys, stable layout
    assert script.prune(doc["openAPIV3Schema"]) == doc["openAPIV3Schema"]  # a fixed point
    assert "description" not in text
    source = doc["source"]
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["path"] == script.CRD_PATH and source["version"] == "v1beta1"
    assert doc["generator"] == SCRIPT.relative_to(REPO).as_posix()
    assert doc["pruned"] == list(script.PRUNED)
    assert sorted(stubs(doc["openAPIV3Schema"])) == sorted(script.PRUNED)
    # what the project's InferenceService uses is there in full
    predictor = doc["openAPIV3Schema"]["properties"]["spec"]["properties"]["predictor"]
    for field in ("containers", "volumes", "canaryTrafficPercent", "minReplicas", "timeout"):
        assert "x-ssr-pruned" not in predictor["properties"][field], field


def synthetic_crd(script: ModuleType) -> dict[str, Any]:
    """A tiny CRD with a description at every level and every path the script prunes."""
    root: dict[str, Any] = {"type": "object", "description": "root", "properties": {}}
    for path in (*script.PRUNED, "spec.predictor.containers"):
        node = root
        for name in path.split("."):
            node = node["properties"].setdefault(
                name, {"type": "object", "description": f"about {name}", "properties": {}}
            )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": script.CRD_NAME,
            "annotations": {"controller-gen.kubebuilder.io/version": "v0.19.0"},
        },
        "spec": {"versions": [{"name": "v1beta1", "schema": {"openAPIV3Schema": root}}]},
    }


def test_prune_script_on_a_small_crd(tmp_path: Path) -> None:
    script = prune_script()
    crd_file = tmp_path / "crd.yaml"
    crd_file.write_text(yaml.safe_dump(synthetic_crd(script)))
    out = tmp_path / "schema.json"
    commit = "ab" * 20
    with pytest.raises(SystemExit):
        script.main(["--crd", str(crd_file), "--commit", "HEAD", "--out", str(out)])
    assert script.main(["--crd", str(crd_file), "--commit", commit, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["source"]["commit"] == commit
    assert doc["source"]["controller-gen"] == "v0.19.0"
    schema = doc["openAPIV3Schema"]
    assert "description" not in json.dumps(schema)
    predictor = schema["properties"]["spec"]["properties"]["predictor"]["properties"]
    assert predictor["sklearn"] == {"x-ssr-pruned": True}
    assert predictor["containers"] == {"type": "object", "properties": {}}  # kept, unpruned
    # deterministic: a second run writes the same bytes
    first = out.read_bytes()
    script.main(["--crd", str(crd_file), "--commit", commit, "--out", str(out)])
    assert out.read_bytes() == first


def test_prune_script_refuses_a_crd_that_moved_on() -> None:
    script = prune_script()
    crd = synthetic_crd(script)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["canary"]
    with pytest.raises(SystemExit, match="spec.canary is not in the CRD"):
        script.document(copy.deepcopy(crd), "ab" * 20)
    crd["metadata"]["name"] = "trainjobs.trainer.kubeflow.org"
    with pytest.raises(SystemExit, match="not the inferenceservices"):
        script.document(crd, "ab" * 20)


def test_stdin_is_read(
    body: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(body)))
    assert main(["-"]) == 0
    assert "1 of 1 InferenceService(s) match the schema" in capsys.readouterr().out
