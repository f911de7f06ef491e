"""Generator loops on the real broker (Tansu) and PostgreSQL: tiers by weight, cancel control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest
from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from imagegen.blobstore import InMemoryBlobStore
from imagegen.db import create_pool, migrate
from imagegen.events import EventEmitter
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.settings import KafkaSettings
from schemas.events import EVENT_ADAPTER, EventBase, JobCancelled, JobCancelledData, event_id
from schemas.jobs import GenerateImage
from schemas.topics import Tier, registry
from services.generator.backends import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
)
from services.generator.cancellation import CancelWatch, PgCancellationStore
from services.generator.loops import control_loop, jobs_loop
from services.generator.migrations import MIGRATIONS, SCHEMA
from services.generator.settings import GeneratorSettings
from services.generator.worker import Generator
from tests.unit.generator.support import ScriptedBackend, make_job

pytestmark = pytest.mark.integration

ECONOMY_BACKLOG = 16


@dataclass
class SlowBackend(ScriptedBackend):
    """Takes a while per image, like a GPU, and remembers which job it ran in which order."""

    busy_s: float = 0.25

    def generate(
        self, request: GenerationRequest, on_progress: object, cancel: CancelToken
    ) -> GeneratedImage:
        time.sleep(self.busy_s)
        return super().generate(request, on_progress, cancel)


@dataclass
class UntilCancelled(ScriptedBackend):
    """Runs until its cancel token is set, as a long GPU image does, checking between steps;
    gives up waiting after `patience_s` and finishes normally (then the test fails)."""

    patience_s: float = 90.0
    stopped: bool = False

    def generate(
        self, request: GenerationRequest, on_progress: object, cancel: CancelToken
    ) -> GeneratedImage:
        self.calls.append(request)
        self.started.set()
        deadline = time.monotonic() + self.patience_s
        while time.monotonic() < deadline:
            if cancel.is_set():
                self.stopped = True
                raise GenerationCancelled("job cancelled at a step")
            time.sleep(0.02)
        return super().generate(request, on_progress, cancel)


@dataclass
class Running:
    settings: KafkaSettings
    publisher: KafkaPublisher
    backend: ScriptedBackend
    generator: Generator

    async def publish(self, job: GenerateImage) -> None:
        await self.publisher.publish(self.settings.topics.jobs(job.tier), job.image.job_id, job)

    def started_jobs(self) -> list[str]:
        # The scripted backend sees prompts; the seed identifies the job in these tests.
        return [str(request.seed) for request in self.backend.calls]


@asynccontextmanager
async def generator_on_broker(
    bootstrap: str, namespace: str, database_url: str, backend: ScriptedBackend | None = None
) -> AsyncIterator[Running]:
    kafka = KafkaSettings(bootstrap=bootstrap, namespace=namespace)
    publisher = KafkaPublisher(bootstrap, "test-generator")
    pool: asyncpg.Pool = await create_pool(database_url, SCHEMA)
    await migrate(pool, SCHEMA, MIGRATIONS)
    watch = CancelWatch(PgCancellationStore(pool), poll_s=0.1)
    backend = backend or SlowBackend("demo")
    settings = GeneratorSettings(progress_interval_s=0)
    generator = Generator(settings, backend, InMemoryBlobStore(), publisher, kafka.topics, watch)
    loops = [
        jobs_loop(kafka, settings.generator, generator, publisher, backoff_initial=0.05),
        control_loop(kafka, watch, publisher),
    ]
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        yield Running(kafka, publisher, backend, generator)
    finally:
        for loop in loops:
            loop.stop()
        await asyncio.gather(*tasks)
        await publisher.close()
        await pool.close()


async def read_events(kafka: KafkaSettings, want: int, timeout: float = 60) -> list[EventBase]:
    """Generation outcome events from the real events topic until `want` have arrived."""
    consumer = KafkaConsumer(kafka.bootstrap, f"{kafka.namespace}.reader", [kafka.topics.events])
    found: list[EventBase] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < want and time.monotonic() < deadline:
            record = await consumer.poll(0.5)
            if record is None:
                continue
            event = EVENT_ADAPTER.validate_json(record.value)
            if event.type in ("generation_completed", "generation_failed"):
                found.append(event)
    finally:
        await consumer.close()
    return found


async def wait_until(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _tiers_settled(kafka: KafkaSettings) -> bool:
    """Whether the generator's group is stable with one member per tier, each assigned."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    group = f"{kafka.namespace}.generator"
    try:
        found = admin.describe_consumer_groups([group])[group].result(10)
    except KafkaException:  # e.g. NOT_COORDINATOR while the group is being set up: ask again
        return False
    return (
        found.state == ConsumerGroupState.STABLE
        and len(found.members) == len(Tier)
        and all(m.assignment.topic_partitions for m in found.members)
    )


async def test_realtime_job_overtakes_an_economy_backlog_and_every_economy_job_completes(
    kafka_bootstrap: str, topic_namespace: str, database_url: str
) -> None:
    economy = [make_job(Tier.ECONOMY, seed=1000 + i) for i in range(ECONOMY_BACKLOG)]
    realtime = make_job(Tier.REALTIME, seed=1)
    probe = make_job(Tier.REALTIME, seed=2)
    async with generator_on_broker(kafka_bootstrap, topic_namespace, database_url) as gen:
        # The tiers' consumers join one group one after another, and a consumer's first
        # fetch may hold only the partitions ready at that moment: until the group is
        # stable and the realtime consumer has handed over a job, the order below would
        # measure who joined first (in one CI run the paid job came last), not the tiers.
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(_tiers_settled, gen.settings):
            assert time.monotonic() < deadline, "the generator's tier consumers never settled"
            await asyncio.sleep(0.1)
        await gen.publish(probe)
        await wait_until(lambda: len(gen.backend.calls) >= 1)
        for job in economy:
            await gen.publish(job)
        # The backlog is queued and being worked on before the paid job arrives.
        await wait_until(lambda: len(gen.backend.calls) >= 2)
        await gen.publish(realtime)
        await wait_until(lambda: len(gen.backend.calls) >= ECONOMY_BACKLOG + 2)
        outcomes = await read_events(gen.settings, ECONOMY_BACKLOG + 2)
    order = gen.started_jobs()
    expected = [*economy, realtime, probe]
    assert sorted(order) == sorted(str(j.seed) for j in expected), "each ran once"
    economy_after_realtime = len(order) - 1 - order.index("1")
    assert economy_after_realtime >= 1, f"the paid job ran after every free one: {order}"
    completed = {e.job_id for e in outcomes if e.type == "generation_completed"}  # type: ignore[attr-defined]
    assert len(completed & {j.image.job_id for j in economy}) == ECONOMY_BACKLOG
    assert realtime.image.job_id in completed
    # Every offset was committed after its image, in each tier's own group.
    assert committed_total(gen.settings, Tier.ECONOMY) == ECONOMY_BACKLOG
    assert committed_total(gen.settings, Tier.REALTIME) == 2


def committed_total(kafka: KafkaSettings, tier: Tier) -> int:
    """Sum of a tier group's committed offsets over the topic's partitions (= messages handled)."""
    topic = kafka.topics.jobs(tier)
    spec = next(s for s in registry(kafka.namespace) if s.name == topic)
    client = Consumer(
        {"bootstrap.servers": kafka.bootstrap, "group.id": f"{kafka.namespace}.generator"}
    )
    try:
        parts = client.committed([TopicPartition(topic, p) for p in range(spec.partitions)], 10)
    finally:
        client.close()
    return sum(max(p.offset, 0) for p in parts)


async def test_a_cancel_on_the_control_topic_keeps_a_queued_job_from_starting(
    kafka_bootstrap: str, topic_namespace: str, database_url: str
) -> None:
    """The scheduler puts a copy of job_cancelled on the control topic (generators read no
    events): the generator-control consumer records it and the job never starts."""
    doomed, kept = make_job(Tier.STANDARD, seed=5), make_job(Tier.STANDARD, seed=6)
    async with generator_on_broker(kafka_bootstrap, topic_namespace, database_url) as gen:
        emitter = EventEmitter(gen.publisher, gen.settings.topics.control, "imagegen/scheduler")
        await emitter.emit(_cancel(doomed))
        store = gen.generator.cancels.store
        deadline = time.monotonic() + 60
        while not await store.is_cancelled(doomed.image.job_id):
            assert time.monotonic() < deadline, "the control consumer never recorded the cancel"
            await asyncio.sleep(0.05)
        await gen.publish(doomed)
        await gen.publish(kept)
        outcomes = await read_events(gen.settings, 2)
    by_job = {e.job_id: e for e in outcomes}
    assert by_job[doomed.image.job_id].type == "generation_failed"  # type: ignore[attr-defined]
    assert by_job[doomed.image.job_id].data.error_type == "Cancelled"  # type: ignore[attr-defined]
    assert by_job[kept.image.job_id].type == "generation_completed"  # type: ignore[attr-defined]
    assert gen.started_jobs() == ["6"]


def _cancel(job: GenerateImage) -> JobCancelled:
    return JobCancelled(
        id=event_id("job_cancelled", job.image.job_id),
        source="",
        subject=f"jobs/{job.image.job_id}",
        job_id=job.image.job_id,
        data=JobCancelledData(),
    )


async def test_a_cancel_on_the_control_topic_stops_a_running_image(
    kafka_bootstrap: str, topic_namespace: str, database_url: str
) -> None:
    """The image is already running when the cancel comes: the control consumer hears of it
    and sets the running image's token, which the backend sees at its next step."""
    job = make_job(Tier.REALTIME, seed=7)
    backend = UntilCancelled("demo")
    async with generator_on_broker(kafka_bootstrap, topic_namespace, database_url, backend) as gen:
        await gen.publish(job)
        assert await asyncio.to_thread(backend.started.wait, 60), "the image never started"
        emitter = EventEmitter(gen.publisher, gen.settings.topics.control, "imagegen/scheduler")
        await emitter.emit(_cancel(job))
        outcomes = await read_events(gen.settings, 1)
    assert backend.stopped, "the backend ran to its end: the cancel never reached it"
    assert [(e.type, e.data.error_type) for e in outcomes] == [  # type: ignore[attr-defined]
        ("generation_failed", "Cancelled")
    ]
