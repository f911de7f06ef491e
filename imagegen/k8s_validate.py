"""Schema validation of built manifests, as the API server would judge them.

Built-in kinds: the Kubernetes OpenAPI schemas bundled with `kubernetes-validate`, in
strict mode (an unknown or misspelt field is an error, as kubectl's default
`--validate=strict` makes it), for the oldest and the newest Kubernetes version we support.
Custom resources: the `openAPIV3Schema` of the CRDs kept in `deploy/k8s/crds`, turned into
JSON Schema with the API server's rules (int-or-string, nullable, unknown fields refused
unless `x-kubernetes-preserve-unknown-fields`), validated with `jsonschema`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import yaml

from imagegen.kustomize import Resource

CRD_DIR = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "crds"
# The oldest Kubernetes the manifests target, and the newest schemas bundled.
K8S_VERSIONS = ("1.31", kubernetes_validate.latest_version())
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _where(resource: Resource) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def crd_schemas(directory: Path = CRD_DIR) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> JSON Schema, for every served version of every CRD kept here."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                api_version = f"{spec['group']}/{version['name']}"
                schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                schemas[(api_version, spec["names"]["kind"])] = schema
    return schemas


def to_json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema as JSON Schema, strict about unknown fields."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {
        k: to_json_schema(v)
        for k, v in node.items()
        if not k.startswith("x-kubernetes-") and k not in ("nullable", "description", "format")
    }
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    is_object = node.get("type") == "object"
    if (
        is_object
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def validate_resources(
    resources: Iterable[Resource],
    versions: Iterable[str] = K8S_VERSIONS,
    crds: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> list[str]:
    """Every problem found, as `Kind/name: where: message` lines; empty when all is valid."""
    crds = crd_schemas() if crds is None else crds
    versions = list(versions)
    problems: list[str] = []
    for resource in resources:
        name = resource.get("metadata", {}).get("name", "")
        if not _DNS_SUBDOMAIN.match(name) or len(name) > 253:
            problems.append(f"{_where(resource)}: metadata.name is not a DNS subdomain")
        key = (resource["apiVersion"], resource["kind"])
        if key in crds:
            problems.extend(_validate_custom(resource, crds[key]))
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problems.append(f"{_where(resource)}: k8s {version}: {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(
                    f"{_where(resource)}: no schema for {key} in Kubernetes {version} "
                    f"nor a CRD in {CRD_DIR}"
                )
    return problems


def _validate_custom(resource: Resource, schema: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{_where(resource)}: {'.'.join(str(p) for p in error.path)}: {error.message}"
        for error in sorted(validator.iter_errors(resource), key=lambda e: [str(p) for p in e.path])
    ]
