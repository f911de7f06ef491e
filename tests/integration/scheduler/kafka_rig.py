"""The scheduler rig on the real broker (Tansu) and PostgreSQL, with a collector of its output."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from imagegen.kafka import Record
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from schemas.topics import TopicNames
from services.scheduler.settings import SchedulerSettings
from tests.unit.scheduler.fakes import FakeGenerator, Policy, SchedulerRig, scheduler_rig


class Collector:
    """Reads topics from the beginning into memory, for assertions."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self._consumer = KafkaConsumer(
            bootstrap, group_id=f"collector-{uuid.uuid4().hex[:8]}", topics=topics
        )
        self.records: dict[str, list[Record]] = defaultdict(list)
        self._stop = asyncio.Event()

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                record = await self._consumer.poll(0.05)
                if record is not None:
                    self.records[record.topic].append(record)
        finally:
            await self._consumer.close()

    def stop(self) -> None:
        self._stop.set()

    async def get(self, topic: str) -> list[Record]:
        return list(self.records[topic])


@dataclass
class KafkaRig:
    rig: SchedulerRig | None
    generator: FakeGenerator
    collector: Collector
    topics: TopicNames
    publisher: KafkaPublisher

    @property
    def sched(self) -> SchedulerRig:
        assert self.rig is not None, "this rig runs no in-process scheduler"
        return self.rig


def consumer_factory(bootstrap: str, namespace: str):  # type: ignore[no-untyped-def]
    def make(group: str, topics: list[str]) -> KafkaConsumer:
        return KafkaConsumer(bootstrap, group_id=f"{namespace}.{group}", topics=topics)

    return make


@asynccontextmanager
async def kafka_rig(
    bootstrap: str,
    namespace: str,
    database_url: str | None,
    settings: SchedulerSettings,
    policy: Policy,
    *,
    instances: int = 1,
) -> AsyncIterator[KafkaRig]:
    """The fake generator and a collector; with `database_url`, in-process schedulers too."""
    topics = TopicNames(namespace)
    publisher = KafkaPublisher(bootstrap, client_id="scheduler-test")
    make = consumer_factory(bootstrap, namespace)
    collector = Collector(bootstrap, [topics.events, *topics.all_jobs()])
    generator = FakeGenerator(make("generator", topics.all_jobs()), publisher, topics, policy)
    tasks = [asyncio.create_task(collector.run()), asyncio.create_task(generator.run())]
    try:
        if database_url is None:
            yield KafkaRig(None, generator, collector, topics, publisher)
        else:
            async with scheduler_rig(
                database_url, settings, publisher, topics, make, collector.get, instances=instances
            ) as rig:
                yield KafkaRig(rig, generator, collector, topics, publisher)
    finally:
        generator.stop()
        collector.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.close()
