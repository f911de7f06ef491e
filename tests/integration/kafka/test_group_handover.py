"""Merging two consumers into one on Apache Kafka: the merged group takes over the topic the
other group read from where that group committed, so records committed under the old layout
are neither handled again nor skipped (imagegen/kafka/handover.py)."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from imagegen.kafka.confluent import KafkaConsumer
from imagegen.runtime import kafka_consumer
from imagegen.settings import KafkaSettings

PER_PARTITION = 3
PARTITIONS = 8  # requests and events both (schemas/topics.py)
OLD_COMMITTED_THROUGH = 1  # the old groups handled offsets 0 and 1 of every partition


def _produce(bootstrap: str, topic: str, tag: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in range(PARTITIONS):
        for i in range(count):
            producer.produce(topic, value=f"{tag}-{i}".encode(), partition=partition)
    assert producer.flush(10) == 0


async def _read(
    consumer: KafkaConsumer, count: int, timeout: float = 60
) -> list[tuple[str, int, int]]:
    """The next `count` records as (topic, partition, offset), each committed once read."""
    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count:
        assert time.monotonic() < deadline, f"read {len(seen)} of {count}: {seen}"
        record = await consumer.poll(0.5)
        if record is not None:
            seen.append((record.topic, record.partition, record.offset))
            await consumer.commit(record)
    return seen


async def _old_layout(settings: KafkaSettings, group: str, topic: str) -> None:
    """A consumer of the old layout that handled offsets 0..1 of every partition of `topic`."""
    consumer = kafka_consumer(settings, group, [topic])
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while seen < PARTITIONS * PER_PARTITION:
            assert time.monotonic() < deadline, f"old layout read {seen}"
            record = await consumer.poll(0.5)
            if record is None:
                continue
            seen += 1
            if record.offset == OLD_COMMITTED_THROUGH:
                await consumer.commit(record)
    finally:
        await consumer.close()


def _merged(settings: KafkaSettings) -> KafkaConsumer:
    """The scheduler's consumer as it runs now: both topics, events taken over."""
    topics = settings.topics
    return kafka_consumer(
        settings,
        "scheduler",
        [topics.requests, topics.events],
        previous_groups={topics.events: "scheduler-outcomes"},
    )


async def test_a_merged_group_takes_over_the_old_groups_offsets_then_keeps_its_own(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    settings = KafkaSettings(
        bootstrap=kafka_bootstrap, namespace=topic_namespace, commit_interval_ms=0
    )
    topics = settings.topics
    _produce(kafka_bootstrap, topics.requests, "before", PER_PARTITION)
    _produce(kafka_bootstrap, topics.events, "before", PER_PARTITION)
    # The old layout: `scheduler` on requests, `scheduler-outcomes` on events.
    await _old_layout(settings, "scheduler", topics.requests)
    await _old_layout(settings, "scheduler-outcomes", topics.events)

    merged = _merged(settings)
    try:
        # What the old groups left: offset 2 of every partition of both topics. A marker
        # after it in every partition bounds the read: anything redone comes before it.
        _produce(kafka_bootstrap, topics.requests, "marker", 1)
        _produce(kafka_bootstrap, topics.events, "marker", 1)
        seen = await _read(merged, 2 * PARTITIONS * 2)
        handover = merged.handover
        assert handover is not None
        taken = {(tp.topic, tp.partition, tp.offset) for tp in handover.handed_over}
    finally:
        await merged.close()
    left = OLD_COMMITTED_THROUGH + 1
    expected = {
        (topic, p, offset)
        for topic in (topics.requests, topics.events)
        for p in range(PARTITIONS)
        for offset in (left, PER_PARTITION)  # the record left, then the marker
    }
    assert sorted(seen) == sorted(expected)  # each once: nothing redone, nothing skipped
    assert taken == {(topics.events, p, left) for p in range(PARTITIONS)}

    # Started again, the merged group resumes from its own offsets: no second handover.
    again = _merged(settings)
    try:
        _produce(kafka_bootstrap, topics.events, "after", 1)
        seen = await _read(again, PARTITIONS)
        assert again.handover is not None
        assert again.handover.handed_over == []
    finally:
        await again.close()
    assert sorted(seen) == [(topics.events, p, PER_PARTITION + 1) for p in range(PARTITIONS)]
