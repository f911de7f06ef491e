"""The per-tier generator Deployments and their KEDA ScaledObjects, from one template.

Why one Deployment per tier: a ScaledObject scales one workload, and a pod that polls every
tier is sized by the busiest tier - a free-tier backlog would buy GPUs that then also run
paid work, and paid latency could not be kept warm without keeping free capacity warm too.
With a Deployment per tier (`IMAGEGEN_GENERATOR_TIERS=<tier>`), each tier's ScaledObject
reads the lag of (`<ns>.generator`, `jobs.<tier>`) and scales only that tier's pods:
- realtime and standard keep a warm pod (min 1): paid work never waits for a cold start,
  which is a GPU node plus a model load (minutes);
- economy scales to zero when its topic is drained: free work pays the cold start, and no
  GPU idles for it. KEDA activates it as soon as its lag is above 0.
- max = that tier's partition count (schemas/topics.py): Kafka gives a partition to one
  member of the group, so a pod beyond it would hold nothing and idle on its GPU.

Every tier's pods join the one group `<ns>.generator` (services/generator/loops.py): Kafka
assigns a topic's partitions only among the members subscribed to it, so lag per topic is
exact, and the offsets of the all-tier generator carry over.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from schemas.topics import DEFAULT_NAMESPACE, Tier, TopicNames, registry

TEMPLATE_FILE = "deploy/k8s/generator/generator.yaml"
TIERS_FILE = "deploy/k8s/generator-tiers/generators.yaml"
# The generator's consumer group is `<namespace>.<GENERATOR_GROUP>` (services/generator/loops.py).
GENERATOR_GROUP = "generator"
GENERATOR = "generator"
TIERS_ENV = "IMAGEGEN_GENERATOR_TIERS"
TIER_LABEL = "imagegen.io/tier"
KAFKA_CLUSTER = "imagegen"
# Strimzi's bootstrap Service for KAFKA_CLUSTER in namespace `kafka`, its `tls` listener
# (SCRAM-SHA-512 or mTLS: imagegen/k8s_users.py); the services' IMAGEGEN_KAFKA_BOOTSTRAP
# (deploy/k8s/base/config.yaml) names the same address.
KAFKA_BOOTSTRAP = f"{KAFKA_CLUSTER}-kafka-bootstrap.kafka.svc:9093"
# The KEDA TriggerAuthentication the tiers' kafka triggers log in with (k8s_users.py).
KEDA_AUTH = "generator-kafka"


def keda_trigger_security(mtls: bool = False) -> dict[str, str]:
    """A kafka trigger's metadata for the secured listener; the secrets are in KEDA_AUTH."""
    return {"tls": "enable", "sasl": "none" if mtls else "scram_sha512"}


@dataclass(frozen=True)
class TierScaling:
    """How KEDA scales one tier's generator Deployment on its topic's lag."""

    min_replicas: int
    lag_threshold: int
    """Images waiting per pod that KEDA aims for: pods = ceil(lag / threshold)."""
    why: str


# At ~5-15 s per image on one GPU: realtime keeps a user's wait under about a minute per
# pod, standard (paid story batches) tolerates minutes, economy (free) much longer.
TIER_SCALING: dict[Tier, TierScaling] = {
    Tier.REALTIME: TierScaling(1, 4, "interactive: about 4 images queued per pod"),
    Tier.STANDARD: TierScaling(1, 16, "paid batches: minutes of queue per pod"),
    Tier.ECONOMY: TierScaling(0, 64, "free: a long queue is acceptable, never starved"),
}
_MIN_WHY = {
    0: "scales to zero: after idling, its first image waits for a cold start",
    1: "a warm GPU: paid work never waits for a cold start",
}


def deployment_name(tier: Tier) -> str:
    return f"{GENERATOR}-{tier.value}"


def tier_partitions(namespace: str = DEFAULT_NAMESPACE) -> dict[Tier, int]:
    """Partitions of each tier's jobs topic, from the registry."""
    by_name = {spec.name: spec.partitions for spec in registry(namespace)}
    names = TopicNames(namespace)
    return {tier: by_name[names.jobs(tier)] for tier in Tier}


def tier_scaledobject(
    tier: Tier,
    namespace: str = DEFAULT_NAMESPACE,
    bootstrap: str = KAFKA_BOOTSTRAP,
    *,
    mtls: bool = False,
) -> dict[str, Any]:
    """The KEDA ScaledObject of one tier's Deployment: one Kafka-lag trigger on its topic."""
    scaling = TIER_SCALING[tier]
    name = deployment_name(tier)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "labels": {TIER_LABEL: tier.value}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "pollingInterval": 15,
            # Only used to go to zero (economy): 10 minutes without lag before the last pod.
            "cooldownPeriod": 600,
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": tier_partitions(namespace)[tier],
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        # Add GPUs fast; give them back slowly (a node takes minutes to return).
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 60}],
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": 600,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                        },
                    }
                }
            },
            "triggers": [
                {
                    "type": "kafka",
                    "name": f"jobs-{tier.value}",
                    "authenticationRef": {"name": KEDA_AUTH},
                    "metadata": {
                        "bootstrapServers": bootstrap,
                        "consumerGroup": f"{namespace}.{GENERATOR_GROUP}",
                        "topic": TopicNames(namespace).jobs(tier),
                        "lagThreshold": str(scaling.lag_threshold),
                        # Lag above 0 wakes a tier at zero pods (economy).
                        "activationLagThreshold": "0",
                        # The generator starts a new group at the earliest offset: count it all.
                        "offsetResetPolicy": "earliest",
                        "allowIdleConsumers": "false",
                        "scaleToZeroOnInvalidOffset": "false",
                        **keda_trigger_security(mtls),
                    },
                }
            ],
        },
    }


def _for_tier(resource: dict[str, Any], tier: Tier) -> dict[str, Any]:
    """A copy of a template resource renamed for `tier`, its labels and selectors narrowed."""
    out = deepcopy(resource)
    out["metadata"]["name"] = deployment_name(tier)
    out["metadata"].setdefault("labels", {})[TIER_LABEL] = tier.value
    out["spec"]["selector"]["matchLabels"][TIER_LABEL] = tier.value
    if out["kind"] == "Deployment":
        out["spec"]["template"]["metadata"]["labels"][TIER_LABEL] = tier.value
        [container] = [
            c for c in out["spec"]["template"]["spec"]["containers"] if c["name"] == GENERATOR
        ]
        env = container.setdefault("env", [])
        found = [e for e in env if e["name"] == TIERS_ENV]
        if found:
            found[0].clear()
            found[0].update(name=TIERS_ENV, value=tier.value)
        else:
            env.append({"name": TIERS_ENV, "value": tier.value})
    return out


def tier_resources(template: str, namespace: str = DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
    """Per tier: the template's Deployment and PDB, renamed and narrowed, and a ScaledObject."""
    docs = [d for d in yaml.safe_load_all(template) if d]
    by_kind = {d["kind"]: d for d in docs if d["metadata"]["name"] == GENERATOR}
    deployment, pdb = by_kind["Deployment"], by_kind["PodDisruptionBudget"]
    resources: list[dict[str, Any]] = []
    for tier in Tier:
        resources += [
            _for_tier(deployment, tier),
            _for_tier(pdb, tier),
            tier_scaledobject(tier, namespace),
        ]
    return resources


def generator_tiers_yaml(root: Path, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The committed per-tier file, generated from the template under `root`."""
    partitions = tier_partitions(namespace)
    notes = [
        f"# Generated by `imagegen k8s generate` from {TEMPLATE_FILE},",
        "# schemas/topics.py and imagegen/k8s_generators.py; do not edit by hand.",
        "# Per tier: a generator Deployment consuming only that tier's topic",
        f"# ({TIERS_ENV}), its PDB, and a KEDA ScaledObject on the lag of group",
        f"# {namespace}.{GENERATOR_GROUP} on that topic: pods = ceil(lag / lagThreshold),",
        "# between minReplicaCount and maxReplicaCount (= the topic's partitions: a pod",
        "# beyond them holds no partition and idles on its GPU). A cold start is a GPU",
        "# node plus a model load: minutes.",
    ]
    for tier in Tier:
        s = TIER_SCALING[tier]
        notes += [
            f"# {tier.value}: min {s.min_replicas}, max {partitions[tier]}, "
            f"lagThreshold {s.lag_threshold}",
            f"#   {s.why};",
            f"#   {_MIN_WHY[min(s.min_replicas, 1)]}.",
        ]
    template = (root / TEMPLATE_FILE).read_text()
    body = "---\n".join(
        yaml.safe_dump(r, sort_keys=False, width=1000) for r in tier_resources(template, namespace)
    )
    return "\n".join(notes) + "\n" + body
