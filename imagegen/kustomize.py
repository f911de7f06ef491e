"""`kustomize build` in Python, for exactly the features `deploy/k8s` uses (CI has no binary).

Supported kustomization fields, with kustomize's semantics:
- `resources`: YAML files (several documents each) and directories holding a
  kustomization; remote URLs are refused.
- `patches`: strategic-merge patches (`path:` or inline `patch:`), each applied to the
  resource its own kind and name identify, or to `target:` (kind, name), by the rules in
  `strategic_merge` below. JSON 6902 patches are refused, not half-applied.
- `namespace`: set on every namespaced resource.
- `labels`: `pairs` added to `metadata.labels`, and to pod templates with
  `includeTemplates: true`; `includeSelectors: true` is refused (selectors stay as written).
- `images`: `newName`, `newTag` or `digest` for containers whose image name matches.
Transformers run in kustomize's order: patches, namespace, labels, images. The output is
sorted in kustomize's default (legacy) order. Anything else in a kustomization is an error,
so a manifest never silently means something different here than under kustomize.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path
from typing import Any

import yaml

from imagegen.errors import ConfigurationError

Resource = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "labels", "images"}
_CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
}
# kustomize's legacy output order: what others depend on first.
_ORDER = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]
_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
_POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
# Merge keys (the Kubernetes API's patchMergeKey) of the built-in list fields, by path in
# the pod spec; every other list, and every list in a custom resource, is replaced.
_POD_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("containers",): "name",
    ("initContainers",): "name",
    ("containers", "env"): "name",
    ("initContainers", "env"): "name",
    ("containers", "volumeMounts"): "mountPath",
    ("initContainers", "volumeMounts"): "mountPath",
    ("containers", "ports"): "containerPort",
    ("initContainers", "ports"): "containerPort",
    ("volumes",): "name",
    ("imagePullSecrets",): "name",
}
_POD_SPEC = ("spec", "template", "spec")
_CRON_POD_SPEC = ("spec", "jobTemplate", "spec", "template", "spec")


def merge_keys_for(resource: Resource) -> dict[tuple[str, ...], str]:
    """The list merge keys of a resource's kind, by full field path."""
    if resource["apiVersion"].rpartition("/")[0] not in _BUILTIN_GROUPS:
        return {}  # custom resources: kustomize knows no schema, lists are replaced
    if resource["kind"] in _POD_TEMPLATE_KINDS:
        pod_spec = _CRON_POD_SPEC if resource["kind"] == "CronJob" else _POD_SPEC
        return {(*pod_spec, *path): key for path, key in _POD_MERGE_KEYS.items()}
    if resource["kind"] == "Service":
        return {("spec", "ports"): "port"}
    return {}


_BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io"}


def build(path: str | Path) -> list[Resource]:
    """The resources of the kustomization at `path` (a directory), transformed and sorted."""
    return sorted(_build(Path(path), stack=()), key=_order_key)


def to_yaml(resources: Iterable[Resource]) -> str:
    """Resources as one multi-document YAML stream, as `kustomize build` prints them."""
    return "---\n".join(yaml.safe_dump(r, sort_keys=False, width=1000) for r in resources)


def _build(directory: Path, stack: tuple[Path, ...]) -> list[Resource]:
    directory = directory.resolve()
    if directory in stack:
        raise ConfigurationError(f"kustomization cycle: {directory} includes itself")
    found = [directory / n for n in KUSTOMIZATION_FILES if (directory / n).is_file()]
    kust_file = found[0] if found else None
    if kust_file is None:
        raise ConfigurationError(f"{directory}: no kustomization.yaml")
    kust = yaml.safe_load(kust_file.read_text()) or {}
    unknown = set(kust) - _FIELDS
    if unknown:
        raise ConfigurationError(f"{kust_file}: unsupported kustomization fields {sorted(unknown)}")
    if kust.get("kind", "Kustomization") != "Kustomization":
        raise ConfigurationError(f"{kust_file}: kind must be Kustomization")

    resources: list[Resource] = []
    for entry in kust.get("resources", []):
        if "://" in entry or entry.startswith("github.com/"):
            raise ConfigurationError(f"{kust_file}: remote resource {entry!r} is not supported")
        target = directory / entry
        if target.is_dir():
            loaded = _build(target, (*stack, directory))
        elif target.is_file():
            loaded = _load_documents(target)
        else:
            raise ConfigurationError(f"{kust_file}: resource {entry!r} does not exist")
        for resource in loaded:
            _add(resources, resource, where=f"{kust_file}: {entry}")

    for patch in kust.get("patches", []):
        resources = _apply_patch(resources, patch, directory, kust_file)
    if "namespace" in kust:
        for resource in resources:
            if resource["kind"] not in _CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kust["namespace"]
    for label in kust.get("labels", []):
        _apply_labels(resources, label, kust_file)
    for image in kust.get("images", []):
        _apply_image(resources, image, kust_file)
    return resources


def _load_documents(path: Path) -> list[Resource]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind"} <= set(doc):
            raise ConfigurationError(f"{path}: every document needs apiVersion and kind")
        if not doc.get("metadata", {}).get("name"):
            raise ConfigurationError(f"{path}: a {doc['kind']} has no metadata.name")
    return docs


def _id(resource: Resource) -> tuple[str, str, str, str]:
    group = resource["apiVersion"].rpartition("/")[0]
    meta = resource["metadata"]
    return group, resource["kind"], meta.get("namespace", ""), meta["name"]


def _add(resources: list[Resource], resource: Resource, where: str) -> None:
    if any(_id(r) == _id(resource) for r in resources):
        raise ConfigurationError(f"{where}: {_id(resource)} is already defined")
    resources.append(resource)


def _order_key(resource: Resource) -> tuple[int, str, str, str]:
    kind = resource["kind"]
    if kind in _ORDER:
        rank = _ORDER.index(kind)
    elif kind in _LAST:
        rank = len(_ORDER) + 1 + _LAST.index(kind)
    else:
        rank = len(_ORDER)
    meta = resource["metadata"]
    return rank, kind, meta.get("namespace", ""), meta["name"]


# --- patches -------------------------------------------------------------------------


def _apply_patch(
    resources: list[Resource], entry: dict[str, Any], directory: Path, kust_file: Path
) -> list[Resource]:
    if "path" in entry:
        text = (directory / entry["path"]).read_text()
    elif "patch" in entry:
        text = entry["patch"]
    else:
        raise ConfigurationError(f"{kust_file}: a patch needs path or patch")
    try:
        patch = yaml.safe_load(text)
    except yaml.composer.ComposerError:
        # `patches:` takes one patch per entry (kustomize refuses several documents too).
        raise ConfigurationError(f"{kust_file}: a patch entry holds one document") from None
    if not isinstance(patch, dict):
        raise ConfigurationError(
            f"{kust_file}: only strategic-merge patches (one mapping) are supported; "
            f"JSON 6902 operation lists are not"
        )
    target = entry.get("target") or {}
    if set(target) - {"kind", "name"}:
        raise ConfigurationError(f"{kust_file}: patch targets select by kind and name only")
    kind = target.get("kind", patch.get("kind"))
    name = target.get("name", patch.get("metadata", {}).get("name"))
    if not kind or not name:
        raise ConfigurationError(f"{kust_file}: a patch must name its target's kind and name")
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    if not matches:
        raise ConfigurationError(f"{kust_file}: patch target {kind}/{name} not found")
    out: list[Resource] = []
    for resource in resources:
        if not any(resource is m for m in matches):
            out.append(resource)
            continue
        if patch.get("$patch") == "delete":
            continue  # the patch removes the whole resource
        body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
        out.append(strategic_merge(resource, body, merge_keys_for(resource)))
    return out


def strategic_merge(
    original: Resource,
    patch: Resource,
    merge_keys: dict[tuple[str, ...], str],
    path: tuple[str, ...] = (),
) -> Resource:
    """`original` with `patch` merged in by Kubernetes' strategic-merge rules (the subset above).

    Maps merge key by key; a null value deletes the key; `$patch: replace` replaces the map;
    lists of built-in kinds with a merge key merge element by element (an element with
    `$patch: delete` removes its match), other lists are replaced.
    """
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive not in (None, "merge"):
        raise ConfigurationError(f"unsupported $patch directive {directive!r} at {'.'.join(path)}")
    merged = deepcopy(original)
    for key, value in patch.items():
        if key == "$patch":
            continue
        if key.startswith("$"):
            raise ConfigurationError(f"unsupported patch directive {key!r} at {'.'.join(path)}")
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = strategic_merge(merged[key], value, merge_keys, (*path, key))
        elif isinstance(value, list) and isinstance(merged.get(key), list):
            merged[key] = _merge_list(merged[key], value, merge_keys, (*path, key))
        else:
            merged[key] = deepcopy(value)
    return merged


def _merge_list(
    original: list[Any],
    patch: list[Any],
    merge_keys: dict[tuple[str, ...], str],
    path: tuple[str, ...],
) -> list[Any]:
    key = merge_keys.get(path)
    if key is None:
        return deepcopy(patch)
    merged = deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ConfigurationError(f"patch list {'.'.join(path)}: every item needs {key!r}")
        index = next((i for i, o in enumerate(merged) if o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            # Elements keep the list's path: merge keys are declared per field, not per item.
            merged[index] = strategic_merge(merged[index], item, merge_keys, path)
    return merged


# --- labels and images -----------------------------------------------------------------


def _apply_labels(resources: list[Resource], label: dict[str, Any], kust_file: Path) -> None:
    if label.get("includeSelectors"):
        raise ConfigurationError(f"{kust_file}: labels with includeSelectors are not supported")
    pairs = {str(k): str(v) for k, v in label.get("pairs", {}).items()}
    for resource in resources:
        resource["metadata"].setdefault("labels", {}).update(pairs)
        if label.get("includeTemplates") and resource["kind"] in _POD_TEMPLATE_KINDS:
            if resource["kind"] == "CronJob":  # and its Job template, as kustomize does
                job = resource["spec"]["jobTemplate"].setdefault("metadata", {})
                job.setdefault("labels", {}).update(pairs)
            template = pod_template(resource).setdefault("metadata", {})
            template.setdefault("labels", {}).update(pairs)


def pod_template(resource: Resource) -> dict[str, Any]:
    """The pod template of a workload (a CronJob's is inside its jobTemplate)."""
    spec = resource["spec"]
    if resource["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry/name:tag@digest` -> (name with registry, tag, digest)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


def _apply_image(resources: list[Resource], image: dict[str, Any], kust_file: Path) -> None:
    if "name" not in image:
        raise ConfigurationError(f"{kust_file}: an images entry needs a name")
    for resource in resources:
        if resource["kind"] not in _POD_TEMPLATE_KINDS:
            continue
        pod = pod_template(resource)["spec"]
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            name, tag, digest = split_image(container["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
                continue
            tag = str(image.get("newTag", tag)) if image.get("newTag", tag) else None
            suffix = f":{tag}" if tag else ""
            container["image"] = f"{name}{suffix}" + (f"@{digest}" if digest else "")
