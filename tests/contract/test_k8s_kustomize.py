"""The Python `kustomize build` follows kustomize's semantics for the features it supports,
and refuses the ones it does not instead of half-applying them."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from imagegen.errors import ConfigurationError
from imagegen.kustomize import build, split_image, to_yaml

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: imagegen
          env:
            - {name: A, value: "1"}
            - {name: B, value: "2"}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
            - {name: models, mountPath: /models}
          resources:
            limits: {memory: 1Gi, nvidia.com/gpu: "1"}
        - name: sidecar
          image: registry.example.com:5000/tools/sidecar:1.0
      tolerations:
        - {key: a, operator: Exists}
      volumes:
        - {name: tmp, emptyDir: {}}
        - {name: models, emptyDir: {}}
"""
SCALED = """
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: web}
spec:
  scaleTargetRef: {name: web}
  triggers:
    - {type: kafka, name: a, metadata: {topic: a}}
    - {type: kafka, name: b, metadata: {topic: b}}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(dedent(text))
    return root


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        {
            "base/kustomization.yaml": """
                resources: [app.yaml]
                labels:
                  - pairs: {team: images}
                    includeTemplates: true
            """,
            "base/app.yaml": DEPLOYMENT + "---\n" + SCALED,
        },
    )


def test_overlay_merges_by_key_deletes_and_replaces(base: Path) -> None:
    write(
        base,
        {
            "overlay/kustomization.yaml": """
                namespace: ns1
                resources: [../base]
                images:
                  - {name: imagegen, newName: reg.io/imagegen, newTag: "1.2"}
                  - {name: registry.example.com:5000/tools/sidecar, digest: "sha256:abc"}
                patches:
                  - path: web.yaml
                  - patch: |-
                      apiVersion: keda.sh/v1alpha1
                      kind: ScaledObject
                      metadata: {name: web}
                      spec:
                        triggers:
                          - {type: kafka, metadata: {topic: c}}
            """,
            "overlay/web.yaml": """
                apiVersion: apps/v1
                kind: Deployment
                metadata: {name: web}
                spec:
                  replicas: 2
                  template:
                    spec:
                      tolerations: []
                      containers:
                        - name: web
                          env:
                            - {name: B, value: "3"}
                            - {name: C, value: "4"}
                          volumeMounts:
                            - {mountPath: /models, $patch: delete}
                          resources:
                            limits: {nvidia.com/gpu: null}
                      volumes:
                        - {name: models, $patch: delete}
            """,
        },
    )
    web, scaled = build(base / "overlay")
    assert (web["kind"], scaled["kind"]) == ("Deployment", "ScaledObject")
    pod = web["spec"]["template"]["spec"]
    main, sidecar = pod["containers"]
    assert web["spec"]["replicas"] == 2
    assert main["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]
    assert main["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert main["resources"] == {"limits": {"memory": "1Gi"}}
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert pod["tolerations"] == []
    assert main["image"] == "reg.io/imagegen:1.2"
    assert sidecar["image"] == "registry.example.com:5000/tools/sidecar@sha256:abc"
    # Lists of custom resources have no merge key: the patch's list replaces the original.
    assert scaled["spec"]["triggers"] == [{"type": "kafka", "metadata": {"topic": "c"}}]
    assert {web["metadata"]["namespace"], scaled["metadata"]["namespace"]} == {"ns1"}
    assert web["metadata"]["labels"] == {"app": "web", "team": "images"}
    assert web["spec"]["template"]["metadata"]["labels"] == {"app": "web", "team": "images"}
    assert web["spec"]["selector"] == {"matchLabels": {"app": "web"}}  # selectors untouched
    assert to_yaml([web, scaled]).count("\n---\n") == 1


def test_a_delete_patch_removes_the_resource(base: Path) -> None:
    write(
        base,
        {
            "o/kustomization.yaml": """
                resources: [../base]
                patches:
                  - patch: |-
                      {apiVersion: keda.sh/v1alpha1, kind: ScaledObject, metadata: {name: web},
                       $patch: delete}
            """
        },
    )
    assert [r["kind"] for r in build(base / "o")] == ["Deployment"]


@pytest.mark.parametrize(
    ("kustomization", "extra", "message"),
    [
        ("resources: [../base]\ncommonLabels: {a: b}", {}, "unsupported kustomization fields"),
        (
            "resources: [../base]\n"
            "patches: [{path: p.yaml, target: {kind: Deployment, name: web}}]",
            {"o/p.yaml": "- {op: replace, path: /spec/replicas, value: 3}"},
            "JSON 6902",
        ),
        (
            "resources: [../base]\npatches: [{path: p.yaml}]",
            {"o/p.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nope}"},
            "Deployment/nope not found",
        ),
        (
            "resources: [../base]\npatches: [{path: p.yaml}]",
            {"o/p.yaml": "kind: Deployment\nmetadata: {name: web}\n---\nkind: Deployment\n"},
            "one document",
        ),
        ("resources: [../base, ../base/app.yaml]", {}, "already defined"),
        ("resources: [https://example.com/x]", {}, "remote resource"),
        ("resources: [missing.yaml]", {}, "does not exist"),
        (
            "resources: [../base]\nlabels: [{pairs: {a: b}, includeSelectors: true}]",
            {},
            "includeSelectors",
        ),
    ],
)
def test_unsupported_or_wrong_input_is_refused(
    base: Path, kustomization: str, extra: dict[str, str], message: str
) -> None:
    write(base, {"o/kustomization.yaml": kustomization, **extra})
    with pytest.raises(ConfigurationError, match=message):
        build(base / "o")


def test_split_image() -> None:
    assert split_image("imagegen") == ("imagegen", None, None)
    assert split_image("reg:5000/a/imagegen:1.0") == ("reg:5000/a/imagegen", "1.0", None)
    assert split_image("reg/imagegen:1@sha256:ab") == ("reg/imagegen", "1", "sha256:ab")
