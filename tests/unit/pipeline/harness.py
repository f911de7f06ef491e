"""The four worker services wired together in one process over the in-memory broker and blob store.

Handlers, schemas and SQL are the real ones; only Kafka and S3 are fakes (PostgreSQL is real).
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from PIL import Image

from imagegen.blobstore import InMemoryBlobStore
from imagegen.db import create_pool, migrate
from imagegen.kafka import ConsumerLoop, DeferredPublisher, Handler
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import EVENT_ADAPTER, EventBase
from schemas.topics import TopicNames
from services.generator.backends import CancelToken, GeneratedImage, GenerationRequest
from services.generator.providers import Providers
from services.generator.settings import GeneratorSettings
from services.generator.worker import Generator
from services.postprocess.handlers import Postprocessor
from services.postprocess.settings import PostprocessSettings
from services.scheduler.handlers import Scheduler
from services.scheduler.migrations import MIGRATIONS as SCHEDULER_MIGRATIONS
from services.scheduler.settings import SchedulerSettings
from services.storage.handlers import StorageService
from services.storage.migrations import MIGRATIONS as STORAGE_MIGRATIONS

# The scheduler's one offer is the fake backend, so its jobs name a provider the generator runs.
FAKE_CATALOGUE = (
    '[{"provider": "fake", "model": "solid-colour", "quality": "high",'
    ' "gpu_price_per_hour_usd": "2.50", "overhead_seconds": "0.01"}]'
)


@dataclass
class FakeBackend:
    """Deterministic coloured squares; fails for chosen image seeds, `failures` times each."""

    name: str = "fake"
    model: str = "solid-colour"
    fail_seeds: set[int] = field(default_factory=set)
    failures: int = 10**9
    calls: list[int] = field(default_factory=list)

    def load(self) -> None:
        pass

    def generate(
        self, request: GenerationRequest, on_progress: object, cancel: CancelToken
    ) -> GeneratedImage:
        self.calls.append(request.seed)
        if request.seed in self.fail_seeds and self.calls.count(request.seed) <= self.failures:
            raise RuntimeError(f"provider exploded for seed {request.seed}")
        for step in range(1, request.steps + 1):
            on_progress(step, request.steps)  # type: ignore[operator]
        colour = (request.seed % 256, (request.seed >> 8) % 256, (request.seed >> 16) % 256)
        buf = io.BytesIO()
        Image.new("RGB", (request.width, request.height), colour).save(buf, "PNG")
        return GeneratedImage(
            png=buf.getvalue(),
            width=request.width,
            height=request.height,
            backend=self.name,
            model=self.model,
            device="cpu",
            versions={},
            demo=False,
            steps_run=request.steps,
            seconds=0.01,
        )

    def cost_usd(self, seconds: float) -> float:
        return round(seconds * 0.001, 6)


@dataclass
class Pipeline:
    broker: InMemoryBroker
    blobs: InMemoryBlobStore
    topics: TopicNames
    scheduler_pool: asyncpg.Pool
    storage_pool: asyncpg.Pool
    backend: FakeBackend

    def events(self) -> list[EventBase]:
        return [
            EVENT_ADAPTER.validate_json(r.value) for r in self.broker.records(self.topics.events)
        ]

    async def wait_for(self, event_type: str, job_id: str, timeout: float = 20) -> EventBase:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.type == event_type and event.job_id == job_id:  # type: ignore[attr-defined]
                    return event
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {event_type} for {job_id} within {timeout}s")


@asynccontextmanager
async def running_pipeline(
    database_url: str,
    backend: FakeBackend | None = None,
    *,
    providers: Providers | None = None,
    catalogue: str = FAKE_CATALOGUE,
    scheduler_overrides: Mapping[str, Any] | None = None,
) -> AsyncIterator[Pipeline]:
    """The pipeline; `providers` (several backends by name) replaces the one fake backend."""
    broker = InMemoryBroker()
    blobs = InMemoryBlobStore()
    topics = TopicNames("unit")
    backend = backend or FakeBackend()
    publisher = broker.publisher()
    async with AsyncExitStack() as stack:
        sched_pool = await create_pool(database_url, "scheduler")
        stack.push_async_callback(sched_pool.close)
        await migrate(sched_pool, "scheduler", SCHEDULER_MIGRATIONS)
        store_pool = await create_pool(database_url, "storage")
        stack.push_async_callback(store_pool.close)
        await migrate(store_pool, "storage", STORAGE_MIGRATIONS)

        scheduler = Scheduler(
            SchedulerSettings(
                default_steps=4,
                retry_backoff_s=0.01,
                tick_interval_s=0.02,
                relay_interval_s=0.05,
                catalogue=catalogue,
                **(scheduler_overrides or {}),
            ),
            sched_pool,
            publisher,
            topics,
        )
        # As the services wire them: their publishes settle before their loop commits.
        deferred = DeferredPublisher(publisher)
        generator = Generator(
            GeneratorSettings(progress_interval_s=0),
            providers or backend,
            blobs,
            deferred,
            topics,
        )
        post = Postprocessor(PostprocessSettings(), blobs, deferred, topics)
        storage = StorageService(store_pool, blobs, deferred, topics)

        def loop(name: str, topic_handlers: dict[str, Handler]) -> ConsumerLoop:
            return ConsumerLoop(
                name=name,
                consumer=broker.consumer(name, list(topic_handlers)),
                handlers=topic_handlers,
                dead_letters=publisher,
                dead_letter_topic=topics.dead_letter,
                backoff_initial=0.01,
                poll_timeout=0.05,
            )

        loops = [
            # One consumer for both of the scheduler's topics, as services/scheduler runs it.
            loop(
                "scheduler",
                {topics.requests: scheduler.on_request, topics.events: scheduler.on_event},
            ),
            loop("generator", {t: generator.on_job for t in topics.all_jobs()}),
            loop("postprocess", {topics.images_raw: post.on_raw_image}),
            loop("storage", {topics.images_processed: storage.on_processed_image}),
        ]
        tasks = [asyncio.create_task(lp.run()) for lp in loops]
        tasks.append(asyncio.create_task(scheduler.run_background()))
        try:
            yield Pipeline(broker, blobs, topics, sched_pool, store_pool, backend)
        finally:
            for lp in loops:
                lp.stop()
            scheduler.stop_background()
            await asyncio.gather(*tasks)
