"""The custom resources' schemas, from the CRDs vendored under deploy/k8s/crds/.

Each CRD's openAPIV3Schema comes from an npm package built from the upstream CRD file
(scripts/vendor_crds.py re-fetches and checks them; provenance.json in each directory
names the package, its sha256 and the upstream version). Loading makes them act as the
API server does with `kubectl apply --validate=strict`:

- an object whose schema lists its properties refuses any other field (the API server
  prunes, and strict field validation refuses, what a structural schema does not
  declare). crd-generate dropped `x-kubernetes-preserve-unknown-fields`, so an object
  the CRD leaves open shows no properties here and stays open: fields under it are not
  checked (in these kinds: none the renderer writes, see test_k8s_custom_resources.py);
- `nullable: true` allows null, and nothing else does;
- `metadata` is the Kubernetes ObjectMeta of the pinned version (kubernetes-validate's
  strict schemas), where crd-generate left a reference to it.

`format` (int32, date-time...) is not checked, as jsonschema does not by default.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

Schema = dict[str, Any]

ROOT = Path(__file__).resolve().parents[3]
CRDS = ROOT / "deploy" / "k8s" / "crds"
KUBERNETES_SCHEMAS = "v1.31.0-local-strict"  # as test_k8s_manifests.py's KUBERNETES_VERSION
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"


def _definitions() -> Schema:
    path = resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/{KUBERNETES_SCHEMAS}/_definitions.json"
    )
    found: Schema = json.loads(path.read_text())
    return found


def _strict(node: Any, definitions_id: str) -> Any:
    """The CRD schema node as the API server applies it (module docstring)."""
    if isinstance(node, list):
        return [_strict(item, definitions_id) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("$ref") == _OBJECT_META:
        return {"$ref": f"{definitions_id}#/$defs/{_OBJECT_META.rstrip('#')}"}
    strict = {k: _strict(v, definitions_id) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True and isinstance(node.get("type"), str):
        strict["type"] = [node["type"], "null"]
    properties = node.get("properties")
    if isinstance(properties, dict) and properties and "additionalProperties" not in node:
        strict["additionalProperties"] = False
    return strict


@cache
def crds() -> dict[str, tuple[Schema, dict[str, Any]]]:
    """Each vendored kind's schema (made strict) and its directory's provenance."""
    definitions = _definitions()
    found = {}
    for provenance_path in sorted(CRDS.glob("*/provenance.json")):
        provenance = json.loads(provenance_path.read_text())
        for kind, name in provenance["kinds"].items():
            raw = json.loads((provenance_path.parent / name).read_text())
            found[kind] = (_strict(raw, definitions["$id"]), provenance)
    return found


@cache
def _registry() -> Registry:
    return Resource.from_contents(_definitions()) @ Registry()


@cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema, _ = crds()[kind]
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def errors(resource: dict[str, Any]) -> list[jsonschema.ValidationError]:
    """Every way the resource breaks its kind's CRD (none when it is valid)."""
    return list(_validator(resource["kind"]).iter_errors(resource))


def undeclared(error: jsonschema.ValidationError) -> set[str]:
    """The fields an `additionalProperties: false` error is about (empty for other errors)."""
    schema = error.schema
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return set()
    declared = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return set(error.instance) - set(declared)


def is_pre_stop_sleep(error: jsonschema.ValidationError) -> bool:
    """A preStop `sleep` action, which Argo Rollouts v1.5.0's CRD predates.

    The CRD embeds the PodSpec of the Kubernetes libraries it was built with; the
    lifecycle `sleep` action is Kubernetes 1.29+. The API server prunes a field its
    structural schema lacks, so under that CRD such a preStop handler would be emptied:
    the rendered pods use an exec `sleep` instead (docs/kubernetes.md).
    """
    path = list(error.absolute_path)
    return (
        path[:4] == ["spec", "template", "spec", "containers"]
        and path[-2:] == ["lifecycle", "preStop"]
        and undeclared(error) == {"sleep"}
    )
