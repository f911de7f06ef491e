"""The edge (Ingress or Gateway API, TLS from cert-manager) and the storage clean-up
CronJob: built, schema-validated (CRDs in deploy/k8s/crds) and held to the policy."""

from __future__ import annotations

from copy import deepcopy
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from imagegen.cli import build_parser
from imagegen.k8s_edge import check_cronjobs, check_ingress, duration_s
from imagegen.k8s_validate import validate_resources
from imagegen.kustomize import Resource, build, pod_template
from services.gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


@cache
def _built(path: str) -> tuple[Resource, ...]:
    return tuple(build(K8S / path))


def built(path: str) -> list[Resource]:
    return deepcopy(list(_built(path)))


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def gateway_api_prod() -> list[Resource]:
    """prod with the Gateway API alternative instead of the Ingress."""
    resources = [r for r in built("overlays/prod") if r["kind"] != "Ingress"]
    for extra in built("edge/gateway-api"):
        extra["metadata"]["namespace"] = "imagegen"
        resources.append(extra)
    return resources


def test_prod_serves_the_gateway_through_an_sse_safe_ingress_with_cert_manager_tls() -> None:
    resources = built("overlays/prod")
    ingress = one(resources, "Ingress", "gateway")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    heartbeat = GatewaySettings().sse_ping_s
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) > 2 * heartbeat
    cert = one(resources, "Certificate", "imagegen-gateway")
    [tls] = ingress["spec"]["tls"]
    assert tls["secretName"] == cert["spec"]["secretName"]
    assert set(tls["hosts"]) <= set(cert["spec"]["dnsNames"])
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one(resources, "Service", "gateway")
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert {r["metadata"]["namespace"] for r in (ingress, cert)} == {"imagegen"}
    assert check_ingress(resources) == []


def test_the_gateway_api_alternative_validates_and_passes_the_policy() -> None:
    resources = gateway_api_prod()
    edge = [r for r in resources if r["kind"] in ("Gateway", "HTTPRoute", "Certificate")]
    assert {r["kind"] for r in edge} == {"Gateway", "HTTPRoute", "Certificate"}
    assert validate_resources(edge) == []
    assert check_ingress(resources) == []
    route = one(resources, "HTTPRoute", "gateway")
    assert duration_s(route["spec"]["rules"][0]["timeouts"]["request"]) == 3600
    listener = one(resources, "Gateway", "imagegen")["spec"]["listeners"][0]
    assert listener["tls"]["certificateRefs"][0]["name"] == "imagegen-gateway-tls"


def _ingress(r: list[Resource]) -> dict[str, Any]:
    return one(r, "Ingress", "gateway")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda r: _ingress(r)["metadata"]["annotations"].pop(
                "nginx.ingress.kubernetes.io/proxy-buffering"
            ),
            "proxy-buffering",
        ),
        (
            lambda r: _ingress(r)["metadata"]["annotations"].update(
                {"nginx.ingress.kubernetes.io/proxy-read-timeout": "20"}
            ),
            "proxy-read-timeout 20s",
        ),
        (
            lambda r: _ingress(r)["spec"]["tls"][0].update(secretName="hand-made"),
            "not issued by a Certificate",
        ),
        (lambda r: _ingress(r)["spec"].pop("tls"), "served without TLS"),
        (
            lambda r: one(r, "Certificate", "imagegen-gateway")["spec"].update(
                dnsNames=["other.example.com"]
            ),
            "does not cover",
        ),
    ],
)
def test_ingress_checks_catch_violations(edit: Any, expected: str) -> None:
    resources = built("overlays/prod")
    edit(resources)
    assert any(expected in p for p in check_ingress(resources)), check_ingress(resources)


def test_gateway_api_checks_catch_a_short_timeout_and_plain_http() -> None:
    resources = gateway_api_prod()
    one(resources, "HTTPRoute", "gateway")["spec"]["rules"][0]["timeouts"]["request"] = "10s"
    assert any("cuts SSE streams" in p for p in check_ingress(resources))
    resources = gateway_api_prod()
    listener = one(resources, "Gateway", "imagegen")["spec"]["listeners"][0]
    listener.update(protocol="HTTP", port=80)
    listener.pop("tls")
    assert any("is not HTTPS" in p for p in check_ingress(resources))


def test_crd_schemas_refuse_unknown_fields_of_the_edge() -> None:
    resources = gateway_api_prod()
    one(resources, "Certificate", "imagegen-gateway")["spec"]["dnsName"] = "typo"
    one(resources, "HTTPRoute", "gateway")["spec"]["rules"][0]["timeouts"]["request"] = "1 hour"
    problems = validate_resources(
        [r for r in resources if r["kind"] in ("Certificate", "HTTPRoute")]
    )
    assert any("Certificate/imagegen-gateway" in p and "dnsName" in p for p in problems)
    assert any("HTTPRoute/gateway" in p and "1 hour" in p for p in problems)


@pytest.mark.parametrize("overlay", ["dev", "prod", "prod-mtls"])
def test_storage_cleanup_runs_nightly_never_overlapping(overlay: str) -> None:
    resources = built(f"overlays/{overlay}")
    cron = one(resources, "CronJob", "storage-cleanup")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert check_cronjobs(resources) == []
    pod = pod_template(cron)
    [container] = pod["spec"]["containers"]
    # The storage image, tagged like the storage Deployment's, and a real CLI command.
    storage = one(resources, "Deployment", "storage")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == storage["image"]
    args = build_parser().parse_args(container["args"])
    assert container["command"] == ["imagegen"] and args.storage_command == "cleanup"
    assert not args.dry_run
    # Labels from the kustomization reach the pod; the egress policies let it reach S3.
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "imagegen"
    https = one(resources, "NetworkPolicy", "imagegen-egress-https")["spec"]["podSelector"]
    assert "storage-cleanup" in https["matchExpressions"][0]["values"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["spec"].update(concurrencyPolicy="Allow"), "concurrencyPolicy must be Forbid"),
        (lambda c: c["spec"].pop("startingDeadlineSeconds"), "startingDeadlineSeconds"),
        (lambda c: c["spec"]["jobTemplate"]["spec"].pop("activeDeadlineSeconds"), "hung run"),
        (
            lambda c: pod_template(c)["spec"]["containers"][0].update(args=["storage", "x"]),
            "no CronJob runs",
        ),
        (
            lambda c: pod_template(c)["spec"]["containers"][0]["securityContext"].update(
                readOnlyRootFilesystem=False
            ),
            "read-only",
        ),
        (
            lambda c: pod_template(c)["spec"]["containers"][0]["env"].append(
                {"name": "IMAGEGEN_S3_SECRET_KEY", "value": "x"}
            ),
            "must come from a Secret",
        ),
    ],
)
def test_cronjob_checks_catch_violations(edit: Any, expected: str) -> None:
    resources = built("overlays/prod")
    edit(one(resources, "CronJob", "storage-cleanup"))
    assert any(expected in p for p in check_cronjobs(resources)), check_cronjobs(resources)


def test_over_mtls_the_cleanup_logs_in_with_storages_certificate() -> None:
    resources = built("overlays/prod-mtls")
    pod = pod_template(one(resources, "CronJob", "storage-cleanup"))["spec"]
    [container] = pod["containers"]
    assert not [e for e in container["env"] if "_KAFKA_SASL_" in e["name"]]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/etc/imagegen/kafka-user"}
    [user] = [v for v in pod["volumes"] if v["name"] == "kafka-user"]
    assert user["secret"]["secretName"] == "imagegen-storage"
    # The same pod under SCRAM would be refused by the policy.
    mtls_config = one(resources, "ConfigMap", "imagegen-config")
    scram = [r for r in built("overlays/prod") if r["kind"] != "ConfigMap"] + [mtls_config]
    assert any("broker protocol is SSL" in p for p in check_cronjobs(scram))
