"""Make ssr/cluster/schemas/inferenceservice-v1beta1.json from KServe's InferenceService CRD.

The full CRD (config/crd/full/serving.kserve.io_inferenceservices.yaml in the KServe repository)
is 2 MB, almost all of it descriptions and parts of the API this project does not use. The
pruned schema keeps, of its v1beta1 ``openAPIV3Schema``:

* every property name at every level (so a misspelt field is still an unknown field);
* the full subtree (types, required, enums, patterns, list types) of everything the project's
  InferenceService uses: apiVersion, kind, metadata, status and ``spec.predictor`` as a pod
  spec with KServe's component extension (replicas, canaryTrafficPercent, timeout, ...);
* a stub, ``{"x-ssr-pruned": true}``, for the subtrees listed in :data:`PRUNED`: the other
  components (transformer, explainer, KServe's Standard-mode canaries), the model-format
  predictors (the predictor here is the project's serve image as a custom container, see
  k8s/kserve/inferenceservice.yaml) and the multi-node worker spec. ssr.cluster.crd_schema
  refuses a body that sets a stubbed field: add it back here (take it out of PRUNED) first.

Descriptions are dropped everywhere. The output is deterministic: sorted keys, one key per line.
Re-running the script on a pruned schema changes nothing, which tests/test_kserve_manifests.py
checks on the committed file.

Usage, from a KServe checkout at the commit to record::

    python k8s/kserve/prune_crd_schema.py \\
        --crd ../kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml \\
        --commit "$(git -C ../kserve rev-parse HEAD)"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "ssr" / "cluster" / "schemas" / "inferenceservice-v1beta1.json"
CRD_PATH = "config/crd/full/serving.kserve.io_inferenceservices.yaml"
CRD_NAME = "inferenceservices.serving.kserve.io"
VERSION = "v1beta1"
STUB = {"x-ssr-pruned": True}
_PREDICTORS = (
    "huggingface",
    "lightgbm",
    "model",
    "onnx",
    "paddle",
    "pmml",
    "pytorch",
    "sklearn",
    "tensorflow",
    "triton",
    "xgboost",
)
PRUNED = (
    "spec.canary",
    "spec.explainer",
    "spec.transformer",
    *(f"spec.predictor.{name}" for name in _PREDICTORS),
    "spec.predictor.workerSpec",
)


def _strip(node: Any) -> Any:
    """``node`` without any ``description`` key, at any depth."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def prune(schema: dict[str, Any], pruned: tuple[str, ...] = PRUNED) -> dict[str, Any]:
    """``schema`` (an ``openAPIV3Schema``) without descriptions, each path of ``pruned`` (dotted
    property names) replaced by :data:`STUB`. A path that is not in the schema is an error: the
    CRD changed and the list must follow."""
    out: dict[str, Any] = _strip(schema)
    for path in pruned:
        node = out
        *parents, last = path.split(".")
        for name in parents:
            node = node.get("properties", {}).get(name, {})
        if last not in node.get("properties", {}):
            raise SystemExit(f"prune_crd_schema: {path} is not in the CRD's schema")
        node["properties"][last] = dict(STUB)
    return out


def version_schema(crd: dict[str, Any], version: str = VERSION) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in the CustomResourceDefinition ``crd``."""
    if crd.get("kind") != "CustomResourceDefinition" or crd["metadata"]["name"] != CRD_NAME:
        raise SystemExit(f"prune_crd_schema: not the {CRD_NAME} CustomResourceDefinition")
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise SystemExit(f"prune_crd_schema: the CRD has no version {version}")


def document(crd: dict[str, Any], commit: str) -> dict[str, Any]:
    """The file's content: where the schema comes from, what was pruned, the schema."""
    annotations = crd["metadata"].get("annotations", {})
    return {
        "source": {
            "repository": "kserve/kserve (GitHub)",
            "commit": commit,
            "path": CRD_PATH,
            "crd": CRD_NAME,
            "version": VERSION,
            "controller-gen": annotations.get("controller-gen.kubebuilder.io/version", ""),
        },
        "generator": "k8s/kserve/prune_crd_schema.py",
        "pruned": list(PRUNED),
        "stub": STUB,
        "openAPIV3Schema": prune(version_schema(crd)),
    }


def dumps(doc: dict[str, Any]) -> str:
    """Deterministic JSON: sorted keys, one per line, no trailing spaces."""
    return json.dumps(doc, indent=1, sort_keys=True, separators=(",", ": ")) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crd", type=Path, required=True, help=f"KServe's {CRD_PATH}")
    parser.add_argument("--commit", required=True, help="the KServe commit the CRD comes from")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write (%(default)s)")
    args = parser.parse_args(argv)
    commit = args.commit.strip()
    if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
        parser.error(f"--commit {commit!r} is not a full git commit hash")
    crd = yaml.safe_load(args.crd.read_text())
    args.out.write_text(dumps(document(crd, commit)))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
