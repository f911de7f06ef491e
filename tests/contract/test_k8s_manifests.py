"""Every overlay builds, validates against the Kubernetes and CRD schemas, and keeps the
deployment contract; each check is also shown to catch what it is for."""

from __future__ import annotations

from copy import deepcopy
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from imagegen import k8s_policy
from imagegen.k8s import OVERLAYS_DIR, check_overlay
from imagegen.k8s_generators import GENERATOR_GROUP, TIERS_ENV, deployment_name, tier_partitions
from imagegen.k8s_validate import crd_schemas, validate_resources
from imagegen.kustomize import Resource, build
from schemas.topics import Tier, TopicNames

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (ROOT / OVERLAYS_DIR).iterdir() if p.is_dir())
SERVICES = {"gateway", "scheduler", "generator", "postprocess", "storage", "analytics"}
TIER_GENERATORS = {deployment_name(tier) for tier in Tier}
DEPLOYMENTS = {
    "dev": SERVICES,  # one all-tier CPU generator
    "prod": SERVICES - {"generator"} | TIER_GENERATORS,
    "prod-mtls": SERVICES - {"generator"} | TIER_GENERATORS,  # prod, with client certificates
}
GROUP = f"imagegen.{GENERATOR_GROUP}"


@cache
def _built(overlay: str) -> tuple[Resource, ...]:
    return tuple(build(ROOT / OVERLAYS_DIR / overlay))


def built(overlay: str) -> list[Resource]:
    return deepcopy(list(_built(overlay)))


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def container(resources: list[Resource], name: str) -> dict[str, Any]:
    c: dict[str, Any] = one(resources, "Deployment", name)["spec"]["template"]["spec"][
        "containers"
    ][0]
    return c


def test_the_overlays_exist() -> None:
    assert OVERLAYS == ["dev", "prod", "prod-mtls"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_passes_every_check(overlay: str) -> None:
    assert check_overlay(ROOT, overlay) == []
    resources = built(overlay)
    deployments = {r["metadata"]["name"] for r in resources if r["kind"] == "Deployment"}
    assert deployments == DEPLOYMENTS[overlay]
    assert {r["metadata"]["namespace"] for r in resources} == {
        "dev": {"imagegen-dev"},
        "prod": {"imagegen"},
        "prod-mtls": {"imagegen"},
    }[overlay]
    topics = {r["spec"]["topicName"] for r in resources if r["kind"] == "KafkaTopic"}
    assert set(TopicNames().all_jobs()) <= topics
    for name in DEPLOYMENTS[overlay]:
        assert container(resources, name)["args"] == [f"services.{name.split('-')[0]}"]


def test_services_start_as_the_manifests_say() -> None:
    import importlib.util

    for name in SERVICES:
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None


def test_prod_runs_released_images_on_gpus_with_keda_and_hpa() -> None:
    resources = built("prod")
    assert k8s_policy.generator_gpu_problems(resources) == []
    for name in SERVICES - {"generator"}:
        image = container(resources, name)["image"]
        assert image == f"registry.example.com/imagegen-{name}:0.1.0"
    scaled = {r["metadata"]["name"]: r["spec"] for r in resources if r["kind"] == "ScaledObject"}
    assert set(scaled) == TIER_GENERATORS
    for tier in Tier:
        name = deployment_name(tier)
        assert container(resources, name)["image"].endswith("imagegen-cuda:0.1.0")
        assert {"name": TIERS_ENV, "value": tier.value} in container(resources, name)["env"]
        assert scaled[name]["scaleTargetRef"]["name"] == name
        assert scaled[name]["maxReplicaCount"] == tier_partitions()[tier]
        [trigger] = scaled[name]["triggers"]
        assert trigger["metadata"]["topic"] == TopicNames().jobs(tier)
        assert trigger["metadata"]["consumerGroup"] == GROUP
    assert one(resources, "HorizontalPodAutoscaler", "gateway")["spec"]["minReplicas"] == 3
    config = one(resources, "ConfigMap", "imagegen-config")["data"]
    assert config["IMAGEGEN_ENV"] == "prod"
    assert config["IMAGEGEN_LOG_FORMAT"] == "json"
    for name in ("scheduler", "postprocess", "storage"):
        assert one(resources, "Deployment", name)["spec"]["replicas"] == 3


def test_dev_is_one_cpu_replica_each_without_autoscalers() -> None:
    resources = built("dev")
    assert not [r for r in resources if r["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
    for name in SERVICES:
        assert one(resources, "Deployment", name)["spec"]["replicas"] == 1
        assert container(resources, name)["image"] == f"imagegen-{name}:dev"
    gen = one(resources, "Deployment", "generator")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(gen)
    assert [v["name"] for v in gen["volumes"]] == ["kafka-ca", "tmp", "dshm"]
    assert k8s_policy.generator_gpu_problems(resources) != []
    assert one(resources, "ConfigMap", "imagegen-config")["data"]["IMAGEGEN_ENV"] == "dev"
    assert one(resources, "ConfigMap", "imagegen-generator")["data"] == {
        "IMAGEGEN_GENERATOR_BACKEND": "demo",
        "IMAGEGEN_GENERATOR_PROVIDERS": "demo",
        "IMAGEGEN_GENERATOR_DEVICE": "cpu",
        "IMAGEGEN_GENERATOR_GPU_PRICE_PER_HOUR": "2.50",
        "IMAGEGEN_GENERATOR_TIER_WEIGHTS": "realtime=6,standard=3,economy=1",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scheduler_offers_only_what_the_generator_holds(overlay: str) -> None:
    import json

    resources = built(overlay)
    gen = one(resources, "ConfigMap", "imagegen-generator")["data"]
    held = set(gen["IMAGEGEN_GENERATOR_PROVIDERS"].split(",")) | {gen["IMAGEGEN_GENERATOR_BACKEND"]}
    offers = json.loads(
        one(resources, "ConfigMap", "imagegen-scheduler")["data"]["IMAGEGEN_CATALOGUE"]
    )
    assert offers and {o["provider"] for o in offers} <= held
    for offer in offers:
        if offer["provider"] == "diffusers":  # the job's model must be the one loaded
            assert offer["model"] == gen["IMAGEGEN_GENERATOR_MODEL"]


def test_grace_periods_outlast_the_drain() -> None:
    resources = built("prod")
    grace = {
        r["metadata"]["name"]: r["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for r in resources
        if r["kind"] == "Deployment"
    }
    assert all(grace[n] == 120 > k8s_policy.DRAIN_SECONDS["generator"] for n in TIER_GENERATORS)
    assert all(grace[n] == 60 for n in SERVICES - {"generator"})
    shorter = deepcopy(resources)
    one(shorter, "Deployment", "generator-economy")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ] = 45
    assert any(
        "generator-economy" in p and "drain 60" in p for p in k8s_policy.check_workloads(shorter)
    )
    gateway_cm = one(shorter, "ConfigMap", "imagegen-gateway")
    gateway_cm["data"]["IMAGEGEN_SHUTDOWN_TIMEOUT_S"] = "58"  # + 5 s preStop > 60 s
    assert any("gateway" in p and "drain 63" in p for p in k8s_policy.check_workloads(shorter))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c, p: c.pop("readinessProbe"), "no HTTP readinessProbe"),
        (lambda c, p: c["resources"].pop("requests"), "cpu and memory requests"),
        (lambda c, p: c["securityContext"].update(readOnlyRootFilesystem=False), "read-only"),
        (lambda c, p: c["securityContext"]["capabilities"].update(drop=[]), "drop ALL"),
        (lambda c, p: p["securityContext"].pop("runAsNonRoot"), "non-root"),
        (lambda c, p: p.update(automountServiceAccountToken=True), "automount"),
        (
            lambda c, p: c["env"].append({"name": "IMAGEGEN_JWT_SECRET", "value": "x" * 32}),
            "must come from a Secret",
        ),
        (lambda c, p: c.update(image="imagegen:latest"), "latest"),
    ],
)
def test_workload_checks_catch_violations(edit: Any, expected: str) -> None:
    resources = built("prod")
    deployment = one(resources, "Deployment", "gateway")
    pod = deployment["spec"]["template"]["spec"]
    edit(pod["containers"][0], pod)
    assert any(expected in p for p in k8s_policy.check_workloads(resources)), expected


def test_every_deployment_has_a_pdb() -> None:
    resources = [r for r in built("prod") if r["metadata"]["name"] != "storage"]
    resources.append(one(built("prod"), "Deployment", "storage"))
    assert k8s_policy.check_workloads(resources) == [
        "Deployment/storage: no PodDisruptionBudget selects its pods"
    ]


def test_only_the_gateway_takes_ingress() -> None:
    resources = built("prod")
    ingress = {
        r["metadata"]["name"]: r["spec"]
        for r in resources
        if r["kind"] == "NetworkPolicy" and r["spec"].get("ingress")
    }
    assert (
        ingress["gateway-ingress"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        == "gateway"
    )
    worker_rule = ingress["workers-metrics-ingress"]["ingress"][0]
    assert [p["port"] for p in worker_rule["ports"]] == [8081]
    # Opening the workers' rule to everyone, or to another port, is refused.
    open_rule = deepcopy(resources)
    one(open_rule, "NetworkPolicy", "workers-metrics-ingress")["spec"]["ingress"][0].pop("from")
    assert k8s_policy.check_network_policies(open_rule)
    other_port = deepcopy(resources)
    rule = one(other_port, "NetworkPolicy", "workers-metrics-ingress")["spec"]["ingress"][0]
    rule["ports"][0]["port"] = 9090
    assert k8s_policy.check_network_policies(other_port)
    no_deny = [r for r in resources if r["metadata"]["name"] != "imagegen-default-deny"]
    assert any("default-deny" in p for p in k8s_policy.check_network_policies(no_deny))


def test_keda_checks_catch_a_ceiling_above_partitions_and_a_wrong_group() -> None:
    resources = built("prod")
    assert k8s_policy.check_autoscaling(resources, GROUP) == []
    one(resources, "ScaledObject", "generator-standard")["spec"]["maxReplicaCount"] = 9
    trigger = one(resources, "ScaledObject", "generator-standard")["spec"]["triggers"][0]
    trigger["metadata"]["consumerGroup"] = "imagegen.other"
    problems = k8s_policy.check_autoscaling(resources, GROUP)
    assert any("maxReplicaCount 9 > 8 partitions" in p for p in problems)
    assert any("consumerGroup 'imagegen.other'" in p for p in problems)


def _set_tiers(resources: list[Resource], deployment: str, value: str) -> None:
    for env in container(resources, deployment)["env"]:
        if env["name"] == TIERS_ENV:
            env["value"] = value


def test_each_scaledobject_scales_the_deployment_of_its_own_tier() -> None:
    resources = built("prod")
    # The economy ScaledObject aimed at the realtime pods: scaling on the wrong lag.
    so = one(resources, "ScaledObject", "generator-economy")
    so["spec"]["scaleTargetRef"]["name"] = "generator-realtime"
    problems = k8s_policy.check_autoscaling(resources, GROUP)
    assert any(
        "generator-economy: triggers on tier(s) ['economy'] but "
        "Deployment/generator-realtime consumes ['realtime']" in p
        for p in problems
    ), problems
    so["spec"]["scaleTargetRef"]["name"] = "generator-gone"
    assert any(
        "scales generator-gone, not in the build" in p
        for p in k8s_policy.check_autoscaling(resources, GROUP)
    )
    # A per-tier pod that consumes every tier (env removed) no longer matches its trigger.
    resources = built("prod")
    env = container(resources, "generator-standard")["env"]
    env[:] = [e for e in env if e["name"] != TIERS_ENV]
    assert any(
        "generator-standard: triggers on tier(s) ['standard']" in p
        for p in k8s_policy.check_autoscaling(resources, GROUP)
    )


def test_realtime_keeps_a_warm_pod_and_economy_may_scale_to_zero() -> None:
    resources = built("prod")
    assert one(resources, "ScaledObject", "generator-economy")["spec"]["minReplicaCount"] == 0
    one(resources, "ScaledObject", "generator-realtime")["spec"]["minReplicaCount"] = 0
    assert any(
        "generator-realtime: serves realtime with minReplicaCount < 1" in p
        for p in k8s_policy.check_autoscaling(resources, GROUP)
    )


def test_every_tier_is_consumed_by_some_generator() -> None:
    assert k8s_policy.check_generator_tiers(built("prod")) == []
    assert k8s_policy.check_generator_tiers(built("dev")) == []  # the all-tier generator
    without_economy = [r for r in built("prod") if r["metadata"]["name"] != "generator-economy"]
    assert k8s_policy.check_generator_tiers(without_economy) == [
        "no generator Deployment consumes tier(s) ['economy']: their jobs would wait"
    ]
    typo = built("prod")
    _set_tiers(typo, "generator-economy", "econmy")
    assert any("unknown tier 'econmy'" in p for p in k8s_policy.check_generator_tiers(typo))


def test_tier_pods_are_selected_by_their_own_pdb_and_the_generator_network_policies() -> None:
    resources = built("prod")
    pods = {
        r["metadata"]["name"]: r["spec"]["template"]["metadata"]["labels"]
        for r in resources
        if r["kind"] == "Deployment"
    }
    pdbs = {
        r["metadata"]["name"]: r["spec"]["selector"]
        for r in resources
        if r["kind"] == "PodDisruptionBudget"
    }
    policies = {
        r["metadata"]["name"]: r["spec"]["podSelector"]
        for r in resources
        if r["kind"] == "NetworkPolicy"
    }
    for name in TIER_GENERATORS:
        # Exactly its own PDB: each tier drains on its own budget.
        assert [p for p, sel in pdbs.items() if k8s_policy._selects(sel, pods[name])] == [name]
        for policy in ("workers-metrics-ingress", "imagegen-egress-core", "imagegen-egress-https"):
            assert k8s_policy._selects(policies[policy], pods[name]), (policy, name)
    # Deployment selectors never overlap: no pod is claimed by two Deployments.
    selectors = {
        r["metadata"]["name"]: r["spec"]["selector"] for r in resources if r["kind"] == "Deployment"
    }
    for name, labels in pods.items():
        assert [d for d, sel in selectors.items() if k8s_policy._selects(sel, labels)] == [name]


def test_schema_validation_catches_unknown_fields_and_wrong_types() -> None:
    resources = built("prod")
    crds = crd_schemas()
    assert {kind for _, kind in crds} == {
        "ScaledObject",
        "TriggerAuthentication",
        "KafkaTopic",
        "KafkaUser",
        "Certificate",
        "Gateway",
        "HTTPRoute",
        "PrometheusRule",
        "ServiceMonitor",
    }
    container(resources, "gateway")["livenessprobe"] = {}
    one(resources, "ScaledObject", "generator-realtime")["spec"]["triggers"][0]["metadata"][
        "lagThreshold"
    ] = 4
    one(resources, "ScaledObject", "generator-realtime")["spec"]["maxReplicas"] = 8
    topic = next(r for r in resources if r["kind"] == "KafkaTopic")
    topic["spec"]["partitions"] = 0
    one(resources, "ServiceMonitor", "gateway")["spec"]["endpoints"][0]["portName"] = "http"
    one(resources, "PrometheusRule", "imagegen")["spec"]["groups"][0]["rules"][0]["for"] = "5 min"
    problems = validate_resources(resources, versions=["1.31"], crds=crds)
    assert any("'livenessprobe' was unexpected" in p for p in problems)
    assert any("lagThreshold: 4 is not of type 'string'" in p for p in problems)
    assert any("'maxReplicas' was unexpected" in p for p in problems)
    assert any("partitions: 0 is less than the minimum of 1" in p for p in problems)
    assert any("'portName' was unexpected" in p for p in problems)
    assert any("rules.0.for: '5 min' does not match" in p for p in problems)
    assert len(problems) == 6, problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_consumer_is_a_static_member_named_after_its_pod(overlay: str) -> None:
    """Each pod's Kafka consumers join with the pod's name as their instance id (downward
    API): unique per live pod, the same when its container restarts."""
    resources = built(overlay)
    for name in DEPLOYMENTS[overlay]:
        env = {e["name"]: e for e in container(resources, name).get("env", [])}
        assert env["IMAGEGEN_KAFKA_INSTANCE_ID"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_reads_the_schedulers_catalogue(overlay: str) -> None:
    """The gateway 422s what no offer serves only if it sees the same catalogue (issue 18)."""
    resources = built(overlay)
    gateway = one(resources, "Deployment", "gateway")
    (container,) = [
        c for c in gateway["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"
    ]
    sources = [s["configMapRef"]["name"] for s in container["envFrom"] if "configMapRef" in s]
    assert any(name.endswith("imagegen-scheduler") for name in sources), sources
