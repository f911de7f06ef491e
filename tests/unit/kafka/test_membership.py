"""Static group membership: each consumer of a process gets its own stable instance id,
none without a configured process name; the local supervisor names processes."""

from __future__ import annotations

from typing import Any

import pytest

from imagegen.kafka import confluent
from imagegen.kafka.membership import instance_id
from imagegen.runtime import kafka_consumer
from imagegen.settings import KafkaSettings
from imagegen.stack.services import Supervisor, member_env
from schemas.topics import Tier
from services.generator.loops import tier_consumer


class _Recorder:
    configs: list[dict[str, Any]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.configs.append(config)

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        pass


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    _Recorder.configs = []
    monkeypatch.setattr(confluent, "_Consumer", _Recorder)
    return _Recorder.configs


def test_instance_id_is_the_process_group_and_suffix_or_none() -> None:
    assert instance_id("generator-7f9c-abcde", "generator", "realtime") == (
        "generator-7f9c-abcde-generator-realtime"
    )
    assert instance_id("", "generator") is None
    assert instance_id(None, "generator") is None


def test_every_consumer_of_a_process_has_its_own_stable_id(configs: list[dict[str, Any]]) -> None:
    settings = KafkaSettings(instance_id="storage-0", namespace="ns")
    kafka_consumer(settings, "storage", ["t1"])
    kafka_consumer(settings, "storage-jobs", ["t2"])
    generator = KafkaSettings(instance_id="generator-0", namespace="ns")
    for tier in Tier:
        tier_consumer(generator, tier)
    ids = [c["group.instance.id"] for c in configs]
    assert ids[:2] == ["storage-0-storage", "storage-0-storage-jobs"]
    # The tier consumers share one group: their ids must differ.
    assert len(set(ids)) == len(ids) == 2 + len(Tier)
    # Built again (a restart), the same ids.
    again = len(configs)
    kafka_consumer(settings, "storage", ["t1"])
    assert configs[again]["group.instance.id"] == "storage-0-storage"


def test_every_consumer_heartbeats_as_set_else_at_a_third_of_its_session(
    configs: list[dict[str, Any]],
) -> None:
    set_ = KafkaSettings(session_timeout_ms=30000, heartbeat_interval_ms=5000)
    default = KafkaSettings(session_timeout_ms=9000)
    for settings in (set_, default):
        kafka_consumer(settings, "storage", ["t1"])
        tier_consumer(settings, Tier.STANDARD)
    beats = [(c["session.timeout.ms"], c["heartbeat.interval.ms"]) for c in configs]
    assert beats == [(30000, 5000), (30000, 5000), (9000, 3000), (9000, 3000)]


def test_without_an_instance_id_membership_stays_dynamic(configs: list[dict[str, Any]]) -> None:
    kafka_consumer(KafkaSettings(), "storage", ["t1"])
    assert "group.instance.id" not in configs[0]


def test_the_supervisor_names_each_service_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("IMAGEGEN_KAFKA_INSTANCE_ID", raising=False)
    assert member_env("postprocess") == {"IMAGEGEN_KAFKA_INSTANCE_ID": "postprocess-0"}
    supervisor = Supervisor({"storage": {}, "gateway": {"X": "1"}}, tmp_path, tmp_path / "p")
    assert supervisor.services["storage"].env["IMAGEGEN_KAFKA_INSTANCE_ID"] == "storage-0"
    # An empty id in the environment turns static membership off (a fault test's baseline).
    monkeypatch.setenv("IMAGEGEN_KAFKA_INSTANCE_ID", "")
    assert member_env("postprocess") == {"IMAGEGEN_KAFKA_INSTANCE_ID": ""}
