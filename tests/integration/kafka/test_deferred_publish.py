"""Deferred publishes on Apache Kafka: a delivery the broker refuses leaves its record's
offset uncommitted; the record is handled again with its publish awaited and meets the loop's
rules as a failed awaited publish does (here: refused for good, so dead-lettered)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from imagegen.kafka import ConsumerLoop, DeferredPublisher, Record
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.stack.kafka import delete_topics
from schemas.deadletter import DeadLetterHeaders
from schemas.topics import TopicNames

LIMIT = 1024
"""The output topic's max.message.bytes: a larger message is refused by the broker itself,
in the delivery report (the client's own limit is far above it)."""


def create_small_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(
        name, num_partitions=1, replication_factor=1, config={"max.message.bytes": str(LIMIT)}
    )
    admin.create_topics([topic])[name].result(30)


def committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int:
    """The group's committed position in the partition (negative: none)."""
    reader = RawConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [position] = reader.committed([TopicPartition(topic, partition)], timeout=10)
        return int(position.offset)
    finally:
        reader.close()


async def read(bootstrap: str, group: str, topic: str, expect: int) -> list[Record]:
    consumer = KafkaConsumer(bootstrap, group, [topic])
    got: list[Record] = []
    try:
        async with asyncio.timeout(30):
            while len(got) < expect:
                record = await consumer.poll(0.5)
                if record is not None:
                    got.append(record)
    finally:
        await consumer.close()
    return got


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(60):
        while not done():
            await asyncio.sleep(0.05)


async def test_a_refused_delivery_leaves_the_offset_uncommitted_until_handled_again(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    topics = TopicNames(topic_namespace)
    small = f"{topic_namespace}.small"
    create_small_topic(kafka_bootstrap, small)
    group = f"{topic_namespace}.deferred"
    publisher = KafkaPublisher(kafka_bootstrap, "test")
    deferred = DeferredPublisher(publisher)
    try:
        await publisher.publish(topics.requests, "k", b"big")
        await publisher.publish(topics.requests, "k", b"fits")
        calls: list[bytes] = []
        committed_at_retry: list[int] = []
        first: list[Record] = []

        async def handle(record: Record) -> None:
            calls.append(record.value)
            if record.value == b"big":
                first.append(record)
                if len(first) == 2:  # handled again: nothing of it may be committed yet
                    committed_at_retry.append(
                        await asyncio.to_thread(
                            committed_offset, kafka_bootstrap, group, record.topic, record.partition
                        )
                    )
            body = b"x" * (4 * LIMIT) if record.value == b"big" else record.value
            await deferred.publish(small, record.key, body)

        loop = ConsumerLoop(
            name=group,
            # Synchronous commits, so that what the group has committed is visible at once.
            consumer=KafkaConsumer(kafka_bootstrap, group, [topics.requests], commit_interval_ms=0),
            handlers={topics.requests: handle},
            dead_letters=publisher,
            dead_letter_topic=topics.dead_letter,
            backoff_initial=0.01,
            poll_timeout=0.2,
        )
        task = asyncio.create_task(loop.run())
        try:
            await until(lambda: loop.handled + loop.dead_lettered >= 2 and b"fits" in calls)
            await until(lambda: loop.dead_lettered == 1)
        finally:
            loop.stop()
            await task

        # The handler returned at once the first time; the refusal came with the delivery
        # report, before any commit, and the record was handled again (awaited this time).
        assert calls.count(b"big") == 2
        big = first[0]
        assert committed_at_retry and committed_at_retry[0] <= big.offset
        [letter] = await read(kafka_bootstrap, f"{group}.dlq", topics.dead_letter, 1)
        headers = DeadLetterHeaders.from_headers(letter.headers)
        assert letter.value == b"big"
        assert headers.error_type == "PermanentError"
        assert "MSG_SIZE_TOO_LARGE" in headers.error_message
        [out] = await read(kafka_bootstrap, f"{group}.out", small, 1)
        assert out.value == b"fits"
        position = await asyncio.to_thread(
            committed_offset, kafka_bootstrap, group, big.topic, big.partition
        )
        assert position == big.offset + 2  # both records committed once settled
    finally:
        await publisher.close()
        delete_topics(kafka_bootstrap, [small])
