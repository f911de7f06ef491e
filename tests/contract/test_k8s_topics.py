"""The committed Strimzi topics are exactly what the registry declares."""

from __future__ import annotations

from pathlib import Path

from imagegen.k8s import TOPICS_FILE, kafka_topics_yaml
from schemas.topics import registry

ROOT = Path(__file__).resolve().parents[2]


def test_committed_kafka_topics_match_the_registry() -> None:
    committed = (ROOT / TOPICS_FILE).read_text()
    assert committed == kafka_topics_yaml(), (
        f"{TOPICS_FILE} drifted from schemas/topics.py: run `imagegen k8s-topics > {TOPICS_FILE}`"
    )
    for spec in registry():
        assert f"topicName: {spec.name}\n  partitions: {spec.partitions}\n" in committed
