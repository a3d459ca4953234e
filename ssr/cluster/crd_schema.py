"""Check an ``InferenceService`` body against KServe's CRD schema before it is sent.

The ``kserve`` Python package cannot be installed next to this project's pins, so bodies are held
to the CRD's own structural schema instead, shipped pruned in
``ssr/cluster/schemas/inferenceservice-v1beta1.json`` (made by k8s/kserve/prune_crd_schema.py,
which records the KServe commit). The checks are those the API server makes on a custom resource
with strict field validation: unknown fields (where a schema lists ``properties`` and neither
sets ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields``; the API server
refuses them, or silently drops them without strict validation), types (``int-or-string`` and
quantities included), required fields, enums, patterns, lengths, bounds, integer formats and
the uniqueness of ``x-kubernetes-list-type`` map and set lists. CRD schemas leave ``metadata``
as a bare object: name, namespace, labels and annotations are checked here as the API server
checks them. A few rules KServe and Knative enforce outside the CRD are added (see
:func:`_kserve_problems`), so that a bad canary split fails here and not in a Knative webhook.

``python -m ssr.cluster.crd_schema FILE...`` checks the InferenceServices of YAML files (``-``:
standard input), e.g. ``kubectl kustomize k8s/kserve | python -m ssr.cluster.crd_schema -``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import yaml

from ssr.errors import SSRError

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferenceService"
SCHEMA_FILE = "schemas/inferenceservice-v1beta1.json"
PRUNED_MARK = "x-ssr-pruned"
# KServe's deployment modes (pkg/constants/constants.go; Serverless and RawDeployment are the
# older names of Knative and Standard, still accepted).
DEPLOYMENT_MODES = frozenset({"Serverless", "Knative", "RawDeployment", "Standard", "ModelMesh"})
DEPLOYMENT_MODE_ANNOTATION = f"{GROUP}/deploymentMode"
# ObjectMeta's fields (k8s.io/apimachinery meta/v1): anything else in metadata is unknown.
OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)
# KServe's InferenceService name (IsvcNameFmt, pkg/apis/serving/v1beta1/
# inference_service_validation.go); a namespace is a DNS-1123 label.
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Label and annotation keys: [DNS-1123 subdomain prefix /] name; label values (apimachinery).
_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (Mapping,),
    "array": (list, tuple),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


class SchemaError(SSRError):
    """A body does not match the API's schema; the message lists every problem found."""


@functools.lru_cache(maxsize=1)
def schema_document() -> dict[str, Any]:
    """The shipped schema file: ``source`` (KServe commit and CRD path), ``pruned`` (the
    subtrees left out) and ``openAPIV3Schema``."""
    text = importlib.resources.files("ssr.cluster").joinpath(SCHEMA_FILE).read_text()
    doc: dict[str, Any] = json.loads(text)
    return doc


def validate_inference_service(body: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaError` naming the object and every problem, if ``body`` (a whole
    InferenceService, as sent by create or replace) does not match KServe's schema."""
    problems = inference_service_problems(body)
    if problems:
        meta = body.get("metadata") if isinstance(body, Mapping) else None
        meta = meta if isinstance(meta, Mapping) else {}
        name = f"{meta.get('namespace') or '?'}/{meta.get('name') or '?'}"
        source = schema_document()["source"]
        raise SchemaError(
            f"InferenceService {name} does not match KServe's {VERSION} schema "
            f"(kserve/kserve@{source['commit'][:12]}): " + "; ".join(problems)
        )


def inference_service_problems(body: Any) -> list[str]:
    """Every problem of ``body`` against the schema, as ``path: problem`` strings."""
    if not isinstance(body, Mapping):
        return [f"the body is {_kind(body)}, not an object"]
    problems = []
    if body.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: {body.get('apiVersion')!r}, expected {API_VERSION!r}")
    if body.get("kind") != KIND:
        problems.append(f"kind: {body.get('kind')!r}, expected {KIND!r}")
    problems += _metadata_problems(body.get("metadata"))
    rest = {k: v for k, v in body.items() if k != "metadata"}
    problems += schema_problems(rest, schema_document()["openAPIV3Schema"])
    return problems + _kserve_problems(body)


# ---- the structural schema -------------------------------------------------------------------


def schema_problems(value: Any, node: Mapping[str, Any], path: str = "") -> list[str]:
    """The problems of ``value`` against the structural schema ``node`` found at ``path``."""
    where = path or "(root)"
    if node.get(PRUNED_MARK):
        return [f"{where}: not checked, pruned from the schema (k8s/kserve/prune_crd_schema.py)"]
    if node.get("x-kubernetes-int-or-string"):
        if isinstance(value, str):
            return _string_problems(value, node, where)
        if isinstance(value, int) and not isinstance(value, bool):
            return _number_problems(value, node, where)
        return [f"{where}: {_kind(value)}, expected an integer or a string"]
    if "anyOf" in node and all(schema_problems(value, b, path) for b in node["anyOf"]):
        return [f"{where}: {_kind(value)} matches none of the allowed forms"]
    expected = node.get("type")
    if expected and not _has_type(value, expected):
        return [f"{where}: {_kind(value)}, expected {expected}"]
    if "enum" in node and value not in node["enum"]:
        return [f"{where}: {value!r} is not one of {node['enum']}"]
    check = _CHECKS.get(expected or "")
    return check(value, node, where) if check else []


def _has_type(value: Any, expected: str) -> bool:
    if isinstance(value, bool):
        return expected == "boolean"
    return isinstance(value, _TYPES.get(expected, (object,)))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for name, types in _TYPES.items():
        if isinstance(value, types):
            return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({json.dumps(value)[:40]})"
    return type(value).__name__


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path and path != "(root)" else key


def _object_problems(value: Mapping[str, Any], node: Mapping[str, Any], path: str) -> list[str]:
    required = [k for k in node.get("required", []) if k not in value]
    problems = [f"{_child(path, k)}: required field missing" for k in required]
    properties = node.get("properties", {})
    extra = node.get("additionalProperties")
    open_ = node.get("x-kubernetes-preserve-unknown-fields") or extra is True
    for key, item in value.items():
        if key in properties:
            problems += schema_problems(item, properties[key], _child(path, key))
        elif isinstance(extra, Mapping):
            problems += schema_problems(item, extra, f"{path}[{key}]")
        elif not open_:
            problems.append(f"{_child(path, key)}: unknown field")
    return problems


def _array_problems(value: list[Any], node: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    if len(value) < node.get("minItems", 0):
        problems.append(f"{path}: fewer than {node['minItems']} items")
    if "maxItems" in node and len(value) > node["maxItems"]:
        problems.append(f"{path}: more than {node['maxItems']} items")
    items = node.get("items")
    for i, item in enumerate(value):
        if isinstance(items, Mapping):
            problems += schema_problems(item, items, f"{path}[{i}]")
    return problems + _list_type_problems(value, node, path)


def _list_type_problems(value: list[Any], node: Mapping[str, Any], path: str) -> list[str]:
    """``x-kubernetes-list-type``: ``map`` lists hold one item per key (missing keys take the
    schema's default, as the API server defaults them), ``set`` lists distinct items."""
    kind = node.get("x-kubernetes-list-type")
    if kind not in ("map", "set"):
        return []
    keys = node.get("x-kubernetes-list-map-keys", [])
    fields = node.get("items", {}).get("properties", {})
    seen: set[str] = set()
    problems = []
    for i, item in enumerate(value):
        if kind == "map" and isinstance(item, Mapping):
            ident = {k: item.get(k, fields.get(k, {}).get("default")) for k in keys}
        else:
            ident = item
        text = json.dumps(ident, sort_keys=True)
        if text in seen:
            problems.append(f"{path}[{i}]: duplicate entry {text}")
        seen.add(text)
    return problems


def _string_problems(value: str, node: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    if "pattern" in node and not re.search(node["pattern"], value):
        problems.append(f"{path}: {value!r} does not match {node['pattern']}")
    if len(value) < node.get("minLength", 0):
        problems.append(f"{path}: shorter than {node['minLength']} characters")
    if "maxLength" in node and len(value) > node["maxLength"]:
        problems.append(f"{path}: longer than {node['maxLength']} characters")
    return problems


def _number_problems(value: float, node: Mapping[str, Any], path: str) -> list[str]:
    low, high = _INT_RANGE.get(node.get("format", ""), (None, None))
    low = node.get("minimum", low)
    high = node.get("maximum", high)
    if low is not None and (value < low or (node.get("exclusiveMinimum") and value == low)):
        return [f"{path}: {value} is below the minimum {low}"]
    if high is not None and (value > high or (node.get("exclusiveMaximum") and value == high)):
        return [f"{path}: {value} is above the maximum {high}"]
    return []


_CHECKS: dict[str, Callable[[Any, Mapping[str, Any], str], list[str]]] = {
    "object": _object_problems,
    "array": _array_problems,
    "string": _string_problems,
    "integer": _number_problems,
    "number": _number_problems,
}


# ---- metadata and KServe's own rules ---------------------------------------------------------


def _metadata_problems(meta: Any) -> list[str]:
    if not isinstance(meta, Mapping):
        return [f"metadata: {_kind(meta)}, expected an object"]
    problems = [f"metadata.{k}: unknown field" for k in meta if k not in OBJECT_META_FIELDS]
    name = meta.get("name")
    if not isinstance(name, str) or not _ISVC_NAME.match(name):
        problems.append(f"metadata.name: {name!r} is not a valid InferenceService name")
    namespace = meta.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and _DNS_LABEL.match(namespace)):
        problems.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for field in ("labels", "annotations"):
        problems += _string_map_problems(meta.get(field, {}), f"metadata.{field}")
    for key, text in (meta.get("labels") or {}).items():
        if isinstance(text, str) and (len(text) > 63 or not _LABEL_VALUE.match(text)):
            problems.append(f"metadata.labels[{key}]: {text!r} is not a valid label value")
    return problems


def _string_map_problems(value: Any, path: str) -> list[str]:
    if not isinstance(value, Mapping):
        return [f"{path}: {_kind(value)}, expected a map of strings"]
    problems = []
    for key, text in value.items():
        if not isinstance(text, str):
            problems.append(f"{path}[{key}]: {_kind(text)}, expected a string")
        if not _qualified_name(key):
            problems.append(f"{path}: {key!r} is not a valid key")
    return problems


def _qualified_name(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _PREFIX.match(prefix)):
        return False
    return len(name) <= 63 and bool(_NAME_PART.match(name))


def _kserve_problems(body: Mapping[str, Any]) -> list[str]:
    """Rules outside the CRD: KServe's webhook (pkg/apis/serving/v1beta1/component.go,
    validateReplicas and validateContainerConcurrency) and Knative's route validation, where
    KServe's canaryTrafficPercent becomes the latest revision's percent (knative.dev/serving
    pkg/apis/serving/v1/route_validation.go: 0 to 100)."""
    problems = []
    meta = body.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION) if isinstance(annotations, Mapping) else None
    if mode is not None and mode not in DEPLOYMENT_MODES:
        where = f"metadata.annotations[{DEPLOYMENT_MODE_ANNOTATION}]"
        problems.append(f"{where}: {mode!r} is not one of {sorted(DEPLOYMENT_MODES)}")
    spec = body.get("spec")
    predictor = spec.get("predictor") if isinstance(spec, Mapping) else None
    if not isinstance(predictor, Mapping):
        return problems
    for field, (low, high) in _PREDICTOR_BOUNDS.items():
        value = predictor.get(field)
        if _is_int(value) and (value < low or (high is not None and value > high)):
            span = f"{low} to {high}" if high is not None else f"at least {low}"
            problems.append(f"spec.predictor.{field}: {value} is out of range ({span})")
    least, most = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if _is_int(least) and _is_int(most) and most and least > most:
        problems.append(f"spec.predictor: minReplicas {least} is above maxReplicas {most}")
    return problems


_PREDICTOR_BOUNDS: dict[str, tuple[int, int | None]] = {
    "canaryTrafficPercent": (0, 100),
    "minReplicas": (0, None),
    "maxReplicas": (0, None),
    "containerConcurrency": (0, None),
}


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def main(argv: list[str] | None = None) -> int:
    """Check every InferenceService of the YAML files named in ``argv`` (``-``: stdin)."""
    failed = checked = 0
    for name in argv if argv is not None else sys.argv[1:]:
        if name == "-":
            text = sys.stdin.read()
        else:
            with open(name, encoding="utf-8") as f:
                text = f.read()
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, Mapping) and doc.get("kind") == KIND:
                checked += 1
                try:
                    validate_inference_service(doc)
                except SchemaError as err:
                    failed += 1
                    print(f"error: {err}", file=sys.stderr)
    print(f"{checked - failed} of {checked} InferenceService(s) match the schema")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
