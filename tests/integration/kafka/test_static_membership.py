"""Static group membership on Apache Kafka: a consumer SIGKILLed and started again under the
same `group.instance.id` reads again at once, not after the session timeout; a static member
that closes gracefully hands its partitions to the others at once (it leaves the group)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from imagegen.kafka.confluent import KafkaConsumer
from schemas.topics import TopicNames

ROOT = Path(__file__).resolve().parents[3]
# Long, so that a consumer that had to wait it out is told apart from one that did not.
SESSION_MS = 30_000
FAST_S = 15.0

_MEMBER = """
import asyncio, sys
from imagegen.kafka.confluent import KafkaConsumer

async def main() -> None:
    bootstrap, group, topic, member, session = sys.argv[1:6]
    consumer = KafkaConsumer(
        bootstrap, group, [topic], session_timeout_ms=int(session), group_instance_id=member
    )
    while await consumer.poll(0.5) is None:
        pass
    print("reading", flush=True)
    while True:
        await consumer.poll(0.5)

asyncio.run(main())
"""


def _produce(bootstrap: str, topic: str, partitions: int, tag: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in range(partitions):
        producer.produce(topic, value=tag.encode(), partition=partition)
    assert producer.flush(10) == 0


def _partitions(bootstrap: str, topic: str) -> int:
    """The topic's partition count, once its metadata has reached the broker we ask."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30
    while True:
        found = admin.list_topics(timeout=10).topics.get(topic)
        if found is not None and found.partitions:
            return len(found.partitions)
        assert time.monotonic() < deadline, f"topic {topic} has no metadata"
        time.sleep(0.2)


async def _first_tagged(consumer: KafkaConsumer, tag: str, timeout: float) -> float:
    """Seconds until `consumer` reads a record of `tag`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        record = await consumer.poll(0.5)
        if record is not None and record.value == tag.encode():
            return time.monotonic() - started
    raise AssertionError(f"nothing tagged {tag} read in {timeout:.0f}s")


def _crashed_member(bootstrap: str, group: str, topic: str, member: str) -> None:
    """A member in another process, SIGKILLed once it has read a record."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _MEMBER, bootstrap, group, topic, member, str(SESSION_MS)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "reading"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_a_killed_static_member_restarted_reads_again_without_the_session_timeout(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    topic = TopicNames(topic_namespace).requests
    group = f"{topic_namespace}.static-{uuid.uuid4().hex[:6]}"
    member = "worker-0-static"
    partitions = _partitions(kafka_bootstrap, topic)
    _produce(kafka_bootstrap, topic, partitions, "before")
    _crashed_member(kafka_bootstrap, group, topic, member)
    tag = uuid.uuid4().hex
    _produce(kafka_bootstrap, topic, partitions, tag)
    again = KafkaConsumer(
        kafka_bootstrap, group, [topic], session_timeout_ms=SESSION_MS, group_instance_id=member
    )
    try:
        waited = await _first_tagged(again, tag, SESSION_MS / 1000 + 30)
    finally:
        await again.close()
    # A dynamic member waits for the dead one's session to end first (measured: 29.9 s).
    assert waited < FAST_S, waited


async def test_a_static_member_closing_gracefully_hands_its_partitions_over_at_once(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    topic = TopicNames(topic_namespace).requests
    group = f"{topic_namespace}.static-{uuid.uuid4().hex[:6]}"
    partitions = _partitions(kafka_bootstrap, topic)
    assert partitions > 1

    def member(name: str) -> KafkaConsumer:
        return KafkaConsumer(
            kafka_bootstrap, group, [topic], session_timeout_ms=SESSION_MS, group_instance_id=name
        )

    leaving, staying = member("pod-a-static"), member("pod-b-static")
    try:
        # Both in the group, each with some of the partitions.
        _produce(kafka_bootstrap, topic, partitions, "warm-up")
        seen = {False}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(seen):
            got = await asyncio.gather(leaving.poll(0.5), staying.poll(0.5))
            seen = {r is not None for r in got} if all(r is not None for r in got) else {False}
        await leaving.close()
        started = time.monotonic()
        tag = uuid.uuid4().hex
        _produce(kafka_bootstrap, topic, partitions, tag)
        read: set[int] = set()
        while len(read) < partitions and time.monotonic() - started < SESSION_MS / 1000 + 30:
            record = await staying.poll(0.5)
            if record is not None and record.value == tag.encode():
                read.add(record.partition)
        waited = time.monotonic() - started
    finally:
        await staying.close()
    assert len(read) == partitions, read
    assert waited < FAST_S, waited
