"""Apache Kafka as the stack starts it: keeps what it acknowledged across a SIGKILL, reports
real high watermarks, and fails with one clear line when Java or Maven is missing."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from imagegen.stack import StackError
from imagegen.stack.kafka import KAFKA_TIMER_SLACK_MS, ApacheKafka, java_binary, kafka_jars
from imagegen.stack.ports import free_port
from imagegen.stack.topics import create_topics
from schemas.topics import TopicSpec, registry

pytestmark = pytest.mark.integration


def _spec(name: str, partitions: int = 2) -> TopicSpec:
    return registry("x")[0].model_copy(update={"name": name, "partitions": partitions})


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value, key=b"k")
    assert producer.flush(20) == 0


def _consume_all(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:
        for _ in range(60):
            msg = consumer.poll(0.5)
            value = msg.value() if msg is not None and msg.error() is None else None
            if value is not None:
                got.append(value)
            if len(got) >= count:
                break
    finally:
        consumer.close()
    return got


def _slack_of_every_thread(pid: int) -> set[int]:
    return {
        int(Path(f"/proc/{tid}/timerslack_ns").read_text())
        for tid in os.listdir(f"/proc/{pid}/task")
    }


def test_acknowledged_messages_survive_sigkill_and_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, topic = free_port(), "durable.v1"
    values = [f"m{i}".encode() for i in range(50)]
    broker = ApacheKafka(port, tmp_path / "kafka")
    with broker:
        assert broker.pid is not None
        # Every thread the JVM started has the broker's timer slack (200 ms by default).
        assert _slack_of_every_thread(broker.pid) == {KAFKA_TIMER_SLACK_MS * 1_000_000}
        create_topics(broker.bootstrap, specs=[_spec(topic)])
        _produce(broker.bootstrap, topic, values)
        broker.kill()  # as a crash would: no clean shutdown, no flush

    monkeypatch.setenv("IMAGEGEN_KAFKA_TIMER_SLACK_MS", "5")
    with ApacheKafka(port, tmp_path / "kafka") as again:
        assert again.pid is not None
        assert _slack_of_every_thread(again.pid) == {5_000_000}
        metadata = AdminClient({"bootstrap.servers": again.bootstrap}).list_topics(timeout=10)
        assert len(metadata.topics[topic].partitions) == 2
        assert _consume_all(again.bootstrap, topic, len(values)) == values


def test_high_watermark_counts_every_message(kafka_bootstrap: str) -> None:
    """What KEDA's scaler and faust's recovery read; Tansu reports it wrongly."""
    topic = f"hw{uuid.uuid4().hex[:8]}.v1"
    create_topics(kafka_bootstrap, specs=[_spec(topic, partitions=1)])
    _produce(kafka_bootstrap, topic, [b"a"] * 7)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "hw"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert (low, high) == (0, 7)


def test_missing_java_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"needs Java 17\+, and no `java` is on PATH"):
        java_binary()


def test_old_java_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(StackError, match=r"needs Java 17\+, but .* is Java 11"):
        java_binary()


def test_missing_maven_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"Maven \(`mvn`\) is not on PATH"):
        kafka_jars(tmp_path / "empty-cache")


def test_unreachable_maven_repository_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "mvn"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Could not transfer artifact: Connection refused'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(StackError, match=r"Maven could not fetch Apache Kafka .*reachable"):
        kafka_jars(tmp_path / "empty-cache")


def test_cluster_ids_never_look_like_an_option() -> None:
    """The storage tool takes `-t ID`: an id starting with '-' (1 in 64) was read as an option
    and failed the stack's start."""
    from imagegen.stack.kafka import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]
    assert not any(cluster_id.startswith("-") for cluster_id in ids)
    assert all(len(cluster_id) == 22 for cluster_id in ids)
