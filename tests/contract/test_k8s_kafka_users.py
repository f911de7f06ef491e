"""Each service's Strimzi KafkaUser grants exactly what it needs, and each pod logs in as its
own user with the secret Strimzi made for it: SCRAM in dev and prod, mTLS in prod-mtls."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from imagegen.k8s_users import (
    CA_DIR,
    CLUSTER_CA_SECRET,
    KEDA_AUTH_FILE,
    MTLS_OVERLAY_FILE,
    USER_DIR,
    USERS_FILE,
    kafka_users_yaml,
    keda_auth_yaml,
    mtls_overlay_yaml,
    user_name,
)
from imagegen.kustomize import Resource, build
from schemas.topics import TopicNames

ROOT = Path(__file__).resolve().parents[2]
T = TopicNames("imagegen")
JOBS = T.all_jobs()
CONSUME, PRODUCE = {"Read", "Describe"}, {"Write", "Describe"}

# Written out by hand from the ARCHITECTURE's table (consumes / produces) and the consumer
# groups of the services' code: the generated users must say the same.
EXPECTED: dict[str, tuple[dict[str, set[str]], set[str]]] = {
    "gateway": (
        {T.events: CONSUME, T.requests: PRODUCE, T.dead_letter: PRODUCE},
        {"imagegen.gateway"},
    ),
    "scheduler": (
        {
            T.requests: CONSUME | PRODUCE,  # discard_image, to storage
            T.events: CONSUME | PRODUCE,
            **dict.fromkeys(JOBS, PRODUCE),
            T.control: PRODUCE,
            T.dead_letter: PRODUCE,
        },
        {"imagegen.scheduler", "imagegen.scheduler-outcomes"},
    ),
    "generator": (
        {
            **dict.fromkeys(JOBS, CONSUME),
            T.control: CONSUME,
            T.events: PRODUCE,
            T.images_raw: PRODUCE,
            T.dead_letter: PRODUCE,
        },
        {"imagegen.generator", "imagegen.generator-control"},
    ),
    "postprocess": (
        {
            T.images_raw: CONSUME,
            T.images_processed: PRODUCE,
            T.events: PRODUCE,
            T.dead_letter: PRODUCE,
        },
        {"imagegen.postprocess"},
    ),
    "storage": (
        {
            T.images_processed: CONSUME,
            T.requests: CONSUME,
            T.events: PRODUCE,
            T.dead_letter: PRODUCE,
        },
        {"imagegen.storage", "imagegen.storage-requests"},
    ),
}


@cache
def _built(overlay: str) -> tuple[Resource, ...]:
    return tuple(build(ROOT / "deploy/k8s/overlays" / overlay))


def _users(overlay: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in _built(overlay) if r["kind"] == "KafkaUser"}


def _grants(user: Resource) -> tuple[dict[str, set[str]], set[str]]:
    topics: dict[str, set[str]] = {}
    groups: set[str] = set()
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource["patternType"] == "literal", "exact names only, no prefixes"
        assert acl.get("type", "allow") == "allow" and acl["host"] == "*"
        if resource["type"] == "topic":
            assert resource["name"] not in topics, "one rule per topic"
            topics[resource["name"]] = set(acl["operations"])
        else:
            assert resource["type"] == "group" and acl["operations"] == ["Read"]
            groups.add(resource["name"])
    return topics, groups


def test_committed_files_are_generated() -> None:
    assert (ROOT / USERS_FILE).read_text() == kafka_users_yaml()
    assert (ROOT / KEDA_AUTH_FILE).read_text() == keda_auth_yaml()
    assert (ROOT / MTLS_OVERLAY_FILE).read_text() == mtls_overlay_yaml()


# Written by hand beside its Deployment (deploy/k8s/base/analytics.yaml): faust names its
# changelog topics and transactional ids itself, so it holds prefix grants on its own names.
ANALYTICS = "analytics"
ANALYTICS_PREFIX = "imagegen.analytics-"


@pytest.mark.parametrize("overlay", ["dev", "prod", "prod-mtls"])
def test_each_service_user_grants_exactly_what_it_needs(overlay: str) -> None:
    users = _users(overlay)
    assert set(users) == {user_name(s) for s in (*EXPECTED, ANALYTICS)}
    kind = "tls" if overlay == "prod-mtls" else "scram-sha-512"
    for service, expected in EXPECTED.items():
        user = users[user_name(service)]
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "imagegen"
        assert user["spec"]["authentication"] == {"type": kind}
        assert user["spec"]["authorization"]["type"] == "simple"
        assert _grants(user) == expected, service


@pytest.mark.parametrize("overlay", ["dev", "prod", "prod-mtls"])
def test_analytics_reads_events_and_owns_only_its_own_names(overlay: str) -> None:
    user = _users(overlay)[user_name(ANALYTICS)]
    kind = "tls" if overlay == "prod-mtls" else "scram-sha-512"
    assert user["spec"]["authentication"] == {"type": kind}
    grants = {
        (a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"]): set(
            a["operations"]
        )
        for a in user["spec"]["authorization"]["acls"]
    }
    assert grants[("topic", T.events, "literal")] == CONSUME
    assert grants[("group", "imagegen.analytics", "literal")] == {"Read", "Describe"}
    for (kind_, name, pattern), operations in grants.items():
        if pattern == "prefix":
            assert name == ANALYTICS_PREFIX, (kind_, name)
        elif kind_ == "topic":
            assert (name, operations) == (T.events, CONSUME), "reads events, writes no topic"


def _containers(overlay: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(component, container, pod spec) of every Deployment."""
    out = []
    for dep in (r for r in _built(overlay) if r["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        component = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        [main] = [c for c in pod["containers"] if c["name"] == component]
        out.append((component, main, pod))
    return out


def _config(overlay: str) -> dict[str, str]:
    [cm] = [
        r
        for r in _built(overlay)
        if r["kind"] == "ConfigMap" and r["metadata"]["name"] == "imagegen-config"
    ]
    data: dict[str, str] = cm["data"]
    return data


def _mounted(container: dict[str, Any], pod: dict[str, Any], path: str) -> dict[str, Any]:
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    assert mount.get("readOnly") is True
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret: dict[str, Any] = volume["secret"]
    return secret


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_pods_log_in_with_their_own_scram_secret(overlay: str) -> None:
    config = _config(overlay)
    assert config["IMAGEGEN_KAFKA_BOOTSTRAP"].endswith(":9093")
    assert config["IMAGEGEN_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["IMAGEGEN_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["IMAGEGEN_KAFKA_SSL_CA_LOCATION"] == f"{CA_DIR}/ca.crt"
    seen = set()
    for component, container, pod in _containers(overlay):
        env = {e["name"]: e for e in container["env"]}
        assert env["IMAGEGEN_KAFKA_SASL_USERNAME"]["value"] == user_name(component)
        assert env["IMAGEGEN_KAFKA_SASL_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": user_name(component), "key": "password"}
        }
        ca = _mounted(container, pod, CA_DIR)
        assert ca == {
            "secretName": CLUSTER_CA_SECRET,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        seen.add(component)
    assert seen == {*EXPECTED, ANALYTICS}


def test_prod_mtls_pods_log_in_with_their_own_certificate() -> None:
    config = _config("prod-mtls")
    assert config["IMAGEGEN_KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert "IMAGEGEN_KAFKA_SASL_MECHANISM" not in config
    assert config["IMAGEGEN_KAFKA_SSL_CERTIFICATE_LOCATION"] == f"{USER_DIR}/user.crt"
    assert config["IMAGEGEN_KAFKA_SSL_KEY_LOCATION"] == f"{USER_DIR}/user.key"
    seen = set()
    for component, container, pod in _containers("prod-mtls"):
        names = {e["name"] for e in container["env"]}
        assert not {n for n in names if "SASL" in n}, component
        assert _mounted(container, pod, CA_DIR)["secretName"] == CLUSTER_CA_SECRET
        assert _mounted(container, pod, USER_DIR) == {
            "secretName": user_name(component),
            "items": [
                {"key": "user.crt", "path": "user.crt"},
                {"key": "user.key", "path": "user.key"},
            ],
        }
        seen.add(component)
    assert seen == {*EXPECTED, ANALYTICS}


@pytest.mark.parametrize("overlay", ["prod", "prod-mtls"])
def test_keda_reads_lag_as_the_generator(overlay: str) -> None:
    resources = _built(overlay)
    [auth] = [r for r in resources if r["kind"] == "TriggerAuthentication"]
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    generator = user_name("generator")
    assert refs["ca"] == (CLUSTER_CA_SECRET, "ca.crt")
    if overlay == "prod":
        assert refs["password"] == (generator, "password")
        [env] = auth["spec"]["env"]
        assert env == {
            "parameter": "username",
            "name": "IMAGEGEN_KAFKA_SASL_USERNAME",
            "containerName": "generator",
        }
    else:
        assert refs["cert"] == (generator, "user.crt") and refs["key"] == (generator, "user.key")
        assert "env" not in auth["spec"] and "password" not in refs
    for scaled in (r for r in resources if r["kind"] == "ScaledObject"):
        [trigger] = scaled["spec"]["triggers"]
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
        assert trigger["metadata"]["tls"] == "enable"
        assert trigger["metadata"]["sasl"] == ("none" if overlay == "prod-mtls" else "scram_sha512")
