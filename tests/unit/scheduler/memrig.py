"""The scheduler rig over the in-memory broker (PostgreSQL stays real)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from imagegen.kafka import Record
from imagegen.kafka.memory import InMemoryBroker
from schemas.characters import CharacterSpec
from schemas.requests import GenerateImages, UserTier
from schemas.topics import TopicNames
from services.scheduler.settings import SchedulerSettings
from tests.unit.scheduler.fakes import FakeGenerator, Policy, SchedulerRig, scheduler_rig


@dataclass
class MemRig:
    rig: SchedulerRig
    broker: InMemoryBroker
    generator: FakeGenerator | None


def pack(
    count: int = 1, user: str = "alice", tier: UserTier = UserTier.PAID, **kw: object
) -> GenerateImages:
    return GenerateImages(
        job_id=str(uuid.uuid4()),
        user_id=user,
        tier=tier,
        character=CharacterSpec(id=f"char-{user}", name="Mira", seed=1234),
        image_count=count,
        width=64,
        height=64,
        **kw,
    )


@asynccontextmanager
async def memory_rig(
    database_url: str, settings: SchedulerSettings, policy: Policy | None = None
) -> AsyncIterator[MemRig]:
    broker = InMemoryBroker()
    topics = TopicNames("unit")
    publisher = broker.publisher()

    async def records(topic: str) -> list[Record]:
        return broker.records(topic)

    generator = None
    task = None
    if policy is not None:
        generator = FakeGenerator(
            broker.consumer("generator", topics.all_jobs()), publisher, topics, policy
        )
        task = asyncio.create_task(generator.run())
    try:
        async with scheduler_rig(
            database_url, settings, publisher, topics, broker.consumer, records
        ) as rig:
            yield MemRig(rig, broker, generator)
    finally:
        if generator is not None and task is not None:
            generator.stop()
            await task
