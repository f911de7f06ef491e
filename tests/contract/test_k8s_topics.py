"""The committed generated manifests are exactly what the registry and the template declare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imagegen import k8s_generators
from imagegen.k8s import GENERATED_FILES, TOPICS_FILE, drifted_files, kafka_topics_yaml
from imagegen.k8s_generators import (
    KAFKA_BOOTSTRAP,
    TEMPLATE_FILE,
    TIER_LABEL,
    TIER_SCALING,
    TIERS_ENV,
    TIERS_FILE,
    deployment_name,
    tier_partitions,
    tier_resources,
    tier_scaledobject,
)
from imagegen.settings import KafkaSettings
from schemas.topics import Tier, TopicNames, TopicSpec, registry
from services.generator import loops

ROOT = Path(__file__).resolve().parents[2]


def _tier_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / TIERS_FILE).read_text()) if d]


def _template() -> str:
    return (ROOT / TEMPLATE_FILE).read_text()


def test_committed_generated_files_match_the_registry() -> None:
    assert drifted_files(ROOT) == [], "generated manifests drifted: run `imagegen k8s generate`"
    committed = (ROOT / TOPICS_FILE).read_text()
    assert committed == kafka_topics_yaml()
    for spec in registry():
        assert f"topicName: {spec.name}\n  partitions: {spec.partitions}\n" in committed
    scaled = [d for d in _tier_docs() if d["kind"] == "ScaledObject"]
    assert scaled == [tier_scaledobject(tier) for tier in Tier]


def test_drift_is_detected_in_the_registry_and_in_the_template(tmp_path: Path) -> None:
    (tmp_path / TEMPLATE_FILE).parent.mkdir(parents=True)
    (tmp_path / TEMPLATE_FILE).write_text(_template())
    for path, generate in GENERATED_FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(generate(tmp_path))
    assert drifted_files(tmp_path) == []
    edited = kafka_topics_yaml().replace("partitions: 8", "partitions: 9")
    (tmp_path / TOPICS_FILE).write_text(edited)
    assert drifted_files(tmp_path) == [TOPICS_FILE]
    # A pod change made in the template reaches the tiers only through `generate`.
    (tmp_path / TEMPLATE_FILE).write_text(_template().replace("memory: 16Gi", "memory: 20Gi"))
    assert drifted_files(tmp_path) == [TOPICS_FILE, TIERS_FILE]


def test_one_scaledobject_per_tier_on_its_topic_and_the_group_the_pods_join(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The group KEDA reads is the one the generator's tier consumers really join.
    joined: dict[str, str] = {}

    def record(bootstrap: str, group_id: str, topics: list[str], **_: object) -> None:
        joined.update(dict.fromkeys(topics, group_id))

    monkeypatch.setattr(loops, "KafkaConsumer", record)
    for tier in Tier:
        loops.tier_consumer(KafkaSettings(), tier)
    for tier in Tier:
        spec = tier_scaledobject(tier)["spec"]
        assert spec["scaleTargetRef"]["name"] == deployment_name(tier)
        [trigger] = spec["triggers"]
        meta = trigger["metadata"]
        assert meta["topic"] == TopicNames().jobs(tier)
        assert meta["consumerGroup"] == joined[TopicNames().jobs(tier)]
        assert meta["bootstrapServers"] == KAFKA_BOOTSTRAP
        assert meta["lagThreshold"] == str(TIER_SCALING[tier].lag_threshold)


def test_each_tier_scales_between_its_minimum_and_its_topics_partitions() -> None:
    partitions = tier_partitions()
    specs = {tier: tier_scaledobject(tier)["spec"] for tier in Tier}
    for tier, spec in specs.items():
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] == partitions[tier]
    assert specs[Tier.REALTIME]["minReplicaCount"] >= 1  # a warm GPU for interactive work
    assert specs[Tier.ECONOMY]["minReplicaCount"] == 0  # free work pays the cold start


def test_the_ceiling_follows_each_tier_topics_own_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fewer_economy_partitions(namespace: str = "imagegen") -> list[TopicSpec]:
        return [
            s.model_copy(update={"partitions": 3}) if ".jobs.economy." in s.name else s
            for s in registry(namespace)
        ]

    monkeypatch.setattr(k8s_generators, "registry", fewer_economy_partitions)
    assert tier_scaledobject(Tier.ECONOMY)["spec"]["maxReplicaCount"] == 3
    assert tier_scaledobject(Tier.REALTIME)["spec"]["maxReplicaCount"] == 8


def test_per_tier_deployments_are_the_template_with_one_tier_each() -> None:
    [template] = [d for d in yaml.safe_load_all(_template()) if d and d["kind"] == "Deployment"]
    resources = tier_resources(_template())
    for tier in Tier:
        [dep] = [
            r
            for r in resources
            if r["kind"] == "Deployment" and r["metadata"]["name"] == deployment_name(tier)
        ]
        [pdb] = [
            r
            for r in resources
            if r["kind"] == "PodDisruptionBudget" and r["metadata"]["name"] == deployment_name(tier)
        ]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels[TIER_LABEL] == tier.value
        assert dep["spec"]["selector"]["matchLabels"][TIER_LABEL] == tier.value
        assert pdb["spec"]["selector"]["matchLabels"][TIER_LABEL] == tier.value
        [container] = dep["spec"]["template"]["spec"]["containers"]
        assert {"name": TIERS_ENV, "value": tier.value} in container["env"]
        # Everything else is the template's: one place to edit the generator pods.
        assert (
            dep["spec"]["template"]["spec"]["nodeSelector"]
            == (template["spec"]["template"]["spec"]["nodeSelector"])
        )
        same = {k: v for k, v in container.items() if k != "env"}
        [original] = template["spec"]["template"]["spec"]["containers"]
        assert same == {k: v for k, v in original.items() if k != "env"}
        assert [e["name"] for e in container["env"]] == [e["name"] for e in original["env"]]
