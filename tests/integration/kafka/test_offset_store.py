"""Handled offsets beside a poll in flight, on Apache Kafka.

confluent-kafka lets one thread at a time into a consumer: a call made while another thread
polls waits (spinning on 1 ms sleeps) until that poll returns. Lanes (storage, postprocess,
the generator) commit on the event loop while another lane polls, so a store made there
froze the event loop for up to the poll's whole timeout. The adapter queues such stores for
the polling thread instead; these tests pin that down and that nothing queued is lost, for
a poll blocked in a thread (where the loop's wake-up pipe is unavailable, and beside a
commit or close) and for one waiting on the loop for that pipe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
from confluent_kafka import Consumer as RawConsumer
from confluent_kafka import TopicPartition
from pydantic import BaseModel

from imagegen.kafka import Record
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from schemas.topics import TopicNames


class Ping(BaseModel):
    n: int


def _committed(bootstrap: str, group: str, record: Record) -> int:
    """The group's committed offset of `record`'s partition, read by a client outside it."""
    reader = RawConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        [found] = reader.committed([TopicPartition(record.topic, record.partition)], 10)
        offset: int = found.offset
        return offset
    finally:
        reader.close()


async def _first(publisher: KafkaPublisher, consumer: KafkaConsumer, topic: str) -> Record:
    """A record published now, as `consumer` gets it."""
    await publisher.publish(topic, "k", Ping(n=1))
    async with asyncio.timeout(30):
        while True:
            record = await consumer.poll(0.5)
            if record is not None:
                return record


async def _polling(consumer: KafkaConsumer, poll: Awaitable[object]) -> asyncio.Task[object]:
    """`poll` running, once it holds the consumer (a poll in flight, as another lane's)."""

    async def run() -> object:
        return await poll

    task = asyncio.create_task(run())
    async with asyncio.timeout(10):
        while not consumer._lock.locked():
            await asyncio.sleep(0.005)
    return task


async def _until_committed(bootstrap: str, group: str, record: Record) -> None:
    async with asyncio.timeout(20):
        while await asyncio.to_thread(_committed, bootstrap, group, record) != record.offset + 1:
            await asyncio.sleep(0.2)


async def test_a_commit_beside_a_poll_in_flight_does_not_wait_for_it_and_still_lands(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    topics = TopicNames(topic_namespace)
    group = f"{topic_namespace}.lanes"
    publisher = KafkaPublisher(kafka_bootstrap, "test")
    consumer = KafkaConsumer(kafka_bootstrap, group, [topics.requests], commit_interval_ms=200)
    try:
        record = await _first(publisher, consumer, topics.requests)
        poll_returned: list[float] = []

        def another_lane_polls() -> None:  # nothing more arrives: waits its whole timeout
            consumer._poll_batch(1, 3.0)
            poll_returned.append(time.monotonic())

        polling = await _polling(consumer, asyncio.to_thread(another_lane_polls))
        await consumer.commit(record)
        committed_at = time.monotonic()
        await polling
        # Before: the store waited for the poll, freezing the event loop for 3 s.
        assert committed_at < poll_returned[0]
        await _until_committed(kafka_bootstrap, group, record)
    finally:
        await consumer.close()
        await publisher.close()


@pytest.mark.parametrize("wakeup", [False, True], ids=["thread-poll", "loop-wakeup"])
async def test_offsets_queued_during_a_poll_are_committed_when_that_poll_revokes_them(
    kafka_bootstrap: str, topic_namespace: str, wakeup: bool
) -> None:
    topics = TopicNames(topic_namespace)
    group = f"{topic_namespace}.revoke{int(wakeup)}"
    publisher = KafkaPublisher(kafka_bootstrap, "test")
    # No periodic commit within the test: only the revocation's commit can land the offset.
    first = KafkaConsumer(
        kafka_bootstrap, group, [topics.requests], commit_interval_ms=600_000, wakeup=wakeup
    )
    assert (first._wakeup is not None) is wakeup
    second: KafkaConsumer | None = None
    try:
        record = await _first(publisher, first, topics.requests)
        if wakeup:  # waits on the loop, holding nothing: the store below is made at once
            polling: asyncio.Task[object] = asyncio.create_task(first.poll(15.0))
            await asyncio.sleep(0.2)
        else:
            polling = await _polling(first, first.poll(15.0))  # serves the rebalance below
        await first.commit(record)  # queued where the poll in flight holds the consumer
        second = KafkaConsumer(kafka_bootstrap, group, [topics.requests])
        joined = asyncio.create_task(second.poll(15.0))
        await _until_committed(kafka_bootstrap, group, record)
        joined.cancel()
        polling.cancel()
    finally:
        await first.close()
        if second is not None:
            await second.close()
        await publisher.close()
