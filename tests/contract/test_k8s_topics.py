"""The committed generated manifests are exactly what the registry declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imagegen.k8s import (
    GENERATED_FILES,
    KAFKA_BOOTSTRAP,
    SCALEDOBJECT_FILE,
    TIER_SCALING,
    TOPICS_FILE,
    drifted_files,
    generator_scaledobject,
    kafka_topics_yaml,
    tier_partitions,
)
from imagegen.settings import KafkaSettings
from schemas.topics import Tier, TopicNames, registry
from services.generator import loops

ROOT = Path(__file__).resolve().parents[2]


def test_committed_generated_files_match_the_registry() -> None:
    assert drifted_files(ROOT) == [], "generated manifests drifted: run `imagegen k8s generate`"
    committed = (ROOT / TOPICS_FILE).read_text()
    assert committed == kafka_topics_yaml()
    for spec in registry():
        assert f"topicName: {spec.name}\n  partitions: {spec.partitions}\n" in committed
    assert yaml.safe_load((ROOT / SCALEDOBJECT_FILE).read_text()) == generator_scaledobject()


def test_drift_is_detected(tmp_path: Path) -> None:
    for path, generate in GENERATED_FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(generate())
    assert drifted_files(tmp_path) == []
    edited = kafka_topics_yaml().replace("partitions: 8", "partitions: 9")
    (tmp_path / TOPICS_FILE).write_text(edited)
    assert drifted_files(tmp_path) == [TOPICS_FILE]


def test_one_trigger_per_tier_on_the_generators_group_and_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    so = generator_scaledobject()
    triggers = {t["metadata"]["topic"]: t["metadata"] for t in so["spec"]["triggers"]}
    assert set(triggers) == set(TopicNames().all_jobs())
    # The group KEDA reads is the one the generator's tier consumers really join.
    joined: dict[str, str] = {}

    def record(bootstrap: str, group_id: str, topics: list[str], **_: object) -> None:
        joined.update(dict.fromkeys(topics, group_id))

    monkeypatch.setattr(loops, "KafkaConsumer", record)
    for tier in Tier:
        loops.tier_consumer(KafkaSettings(), tier)
    for tier in Tier:
        meta = triggers[TopicNames().jobs(tier)]
        assert meta["consumerGroup"] == joined[TopicNames().jobs(tier)]
        assert meta["bootstrapServers"] == KAFKA_BOOTSTRAP
        assert meta["lagThreshold"] == str(TIER_SCALING[tier].lag_threshold)


def test_keda_never_scales_past_the_partitions_of_any_tier_topic() -> None:
    spec = generator_scaledobject()["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= min(tier_partitions().values())
    assert spec["maxReplicaCount"] == min(tier_partitions().values())  # and uses them all
