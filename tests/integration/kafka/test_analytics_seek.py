"""The analytics consumer's seek after a recovery, on Apache Kafka (services/analytics/fetching.py).

A restarted analytics process may fetch records of the events topic before faust lets them
through (they are dropped, aiokafka's position moves on); faust's seek back to the
committed offsets is what gives them back. aiokafka's own seek skips a partition whose
committed offset is missing or 0, so counts of a partition the killed process had not
committed yet were lost. These tests put a consumer past such partitions and seek.
"""

from __future__ import annotations

import asyncio
import uuid

import aiokafka
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from imagegen.stack.kafka import delete_topics
from services.analytics.app import create_app
from services.analytics.settings import AnalyticsSettings


def _topic_with_records(bootstrap: str, partitions: int, per_partition: int) -> str:
    topic = f"seek-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in range(partitions):
        for n in range(per_partition):
            producer.produce(topic, f"{partition}:{n}".encode(), partition=partition)
    assert producer.flush(30) == 0
    return topic


def test_every_stream_partition_goes_back_to_its_committed_offset_or_the_start(
    kafka_bootstrap: str,
) -> None:
    topic = _topic_with_records(kafka_bootstrap, partitions=3, per_partition=4)
    group = f"analytics-seek-{uuid.uuid4().hex[:8]}"
    settings = AnalyticsSettings()
    settings.kafka.bootstrap = kafka_bootstrap

    async def positions_after_seek() -> tuple[dict[int, int], dict[int, int | None]]:
        app, _ = create_app(settings)
        app.finalize()
        thread = app.consumer._thread  # type: ignore[attr-defined]  # faust's aiokafka thread
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(3)]
            consumer.assign(tps)
            # Partition 0 committed at 2, partition 1 at 0, partition 2 never.
            await consumer.commit(
                {tps[0]: OffsetAndMetadata(2, ""), tps[1]: OffsetAndMetadata(0, "")}
            )
            for tp in tps:
                consumer.seek(tp, 0)
            read = 0
            async with asyncio.timeout(30):
                while read < 12:
                    batches = await consumer.getmany(timeout_ms=1000)
                    read += sum(len(records) for records in batches.values())
            assert {tp.partition: await consumer.position(tp) for tp in tps} == {
                0: 4,
                1: 4,
                2: 4,
            }
            thread._consumer = consumer
            committed = await thread._seek_stream_partitions()
            return (
                {tp.partition: await consumer.position(tp) for tp in tps},
                {tp.partition: offset for tp, offset in committed.items()},
            )
        finally:
            thread._consumer = None
            await consumer.stop()

    try:
        positions, committed = asyncio.run(positions_after_seek())
    finally:
        delete_topics(kafka_bootstrap, [topic])
    assert committed == {0: 2, 1: 0, 2: None}
    # aiokafka's seek_to_committed leaves partitions 1 and 2 at 4: their records were gone.
    assert positions == {0: 2, 1: 0, 2: 0}
