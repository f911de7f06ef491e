"""Cancellation: recorded from the events topic in PostgreSQL, checked before and during a run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from imagegen.blobstore import InMemoryBlobStore
from imagegen.db import create_pool, migrate
from imagegen.kafka import Record
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import (
    GenerationFailed,
    GenerationProgress,
    GenerationProgressData,
    JobCancelled,
    JobCancelledData,
    event_id,
)
from schemas.topics import TopicNames
from services.generator.backends import (
    CancelToken,
    GeneratedImage,
    GenerationRequest,
    ImageBackend,
    build_backend,
)
from services.generator.cancellation import CancelListener, CancelWatch, PgCancellationStore
from services.generator.migrations import MIGRATIONS, SCHEMA
from services.generator.settings import GeneratorSettings
from services.generator.worker import Generator
from tests.unit.generator.support import ScriptedBackend, make_job, of_type, record_of

LONG_RUN_STEPS = 150  # the contract's maximum; the tiny pipeline needs seconds for it


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PgCancellationStore]:
    pool: asyncpg.Pool = await create_pool(database_url, SCHEMA)
    try:
        await migrate(pool, SCHEMA, MIGRATIONS)
        yield PgCancellationStore(pool)
    finally:
        await pool.close()


def cancelled_record(job_id: str, offset: int = 0) -> Record:
    event = JobCancelled(
        id=event_id("job_cancelled", job_id),
        source="imagegen/scheduler",
        subject=f"jobs/{job_id}",
        job_id=job_id,
        user_id="alice",
        data=JobCancelledData(),
    )
    return Record("unit.events.v1", 0, offset, job_id, event.model_dump_json().encode())


class CountingBackend:
    """Wraps a real backend and counts the diffusion steps it has run so far."""

    def __init__(self, inner: ImageBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model
        self.steps = 0

    def load(self) -> None:
        self.inner.load()

    def generate(
        self, request: GenerationRequest, on_progress: Any, cancel: CancelToken
    ) -> GeneratedImage:
        def counting(step: int, total: int) -> None:
            self.steps = step
            on_progress(step, total)

        return self.inner.generate(request, counting, cancel)

    def cost_usd(self, seconds: float) -> float:
        return self.inner.cost_usd(seconds)


@pytest.fixture(scope="module")
def tiny_sd(tiny_sd_path: Path) -> ImageBackend:
    backend = build_backend("diffusers", str(tiny_sd_path), device="cpu")
    backend.load()
    return backend


def generator_with(
    backend: ImageBackend, watch: CancelWatch
) -> tuple[Generator, InMemoryBroker, TopicNames]:
    broker, topics = InMemoryBroker(), TopicNames("unit")
    generator = Generator(
        GeneratorSettings(progress_interval_s=0),
        backend,
        InMemoryBlobStore(),
        broker.publisher(),
        topics,
        watch,
    )
    return generator, broker, topics


def only_cancelled_failure(broker: InMemoryBroker, topics: TopicNames) -> GenerationFailed:
    (failed,) = of_type(broker, topics, "generation_failed")
    assert isinstance(failed, GenerationFailed)
    assert failed.data.error_type == "Cancelled"
    assert (failed.data.retryable, failed.data.final) == (False, False)
    assert broker.records(topics.images_raw) == []
    assert of_type(broker, topics, "generation_completed") == []
    return failed


async def test_listener_records_job_cancelled_and_ignores_everything_else(
    store: PgCancellationStore,
) -> None:
    listener = CancelListener(CancelWatch(store))
    progress = GenerationProgress(
        id="p1",
        source="imagegen/generator",
        subject="jobs/j-progress/images/0",
        job_id="j-progress",
        data=GenerationProgressData(image_id="i", image_index=0, step=1, total_steps=4),
    )
    for value in (
        progress.model_dump_json().encode(),
        b"not json at all",
        b'{"type": "generation_failed", "job_id": "j-other", "note": "job_cancelled"}',
        b'{"type": "job_cancelled"}',
    ):
        await listener.on_event(Record("unit.events.v1", 0, 0, None, value))
    await listener.on_event(cancelled_record("j-1"))
    await listener.on_event(cancelled_record("j-1", offset=1))  # redelivery is harmless
    assert await store.is_cancelled("j-1")
    for other in ("j-progress", "j-other", ""):
        assert not await store.is_cancelled(other)


async def test_a_cancelled_queued_job_never_starts(store: PgCancellationStore) -> None:
    backend = ScriptedBackend("demo")
    generator, broker, topics = generator_with(backend, CancelWatch(store))
    job = make_job()
    await CancelListener(generator.cancels).on_event(cancelled_record(job.image.job_id))
    await generator.on_job(record_of(job, topics))
    assert backend.calls == []
    assert of_type(broker, topics, "generation_started") == []
    only_cancelled_failure(broker, topics)
    # Other jobs still run.
    await generator.on_job(record_of(make_job(), topics))
    assert len(backend.calls) == 1


async def _wait_for_steps(backend: CountingBackend, steps: int, task: asyncio.Task[None]) -> None:
    while backend.steps < steps:
        assert not task.done(), "the run ended before the cancel could be sent"
        await asyncio.sleep(0.005)


async def test_cancel_seen_by_this_pod_stops_a_long_diffusers_run_within_two_steps(
    store: PgCancellationStore, tiny_sd: ImageBackend
) -> None:
    backend = CountingBackend(tiny_sd)
    # A slow store poll: the stop must come from the control consumer's notification.
    generator, broker, topics = generator_with(backend, CancelWatch(store, poll_s=30))
    job = make_job(steps=LONG_RUN_STEPS)
    run = asyncio.create_task(generator.on_job(record_of(job, topics)))
    await _wait_for_steps(backend, 3, run)
    await CancelListener(generator.cancels).on_event(cancelled_record(job.image.job_id))
    at_cancel = backend.steps
    await asyncio.wait_for(run, 60)
    assert backend.steps - at_cancel <= 2, (at_cancel, backend.steps)
    assert backend.steps < LONG_RUN_STEPS
    failed = only_cancelled_failure(broker, topics)
    assert f"of {LONG_RUN_STEPS} steps" in failed.data.error
    started = of_type(broker, topics, "generation_started")
    assert len(started) == 1


async def test_cancel_recorded_by_another_pod_reaches_the_running_image_by_polling(
    store: PgCancellationStore, tiny_sd: ImageBackend
) -> None:
    backend = CountingBackend(tiny_sd)
    generator, broker, topics = generator_with(backend, CancelWatch(store, poll_s=0.05))
    job = make_job(steps=LONG_RUN_STEPS)
    run = asyncio.create_task(generator.on_job(record_of(job, topics)))
    await _wait_for_steps(backend, 3, run)
    await store.cancel(job.image.job_id)  # another pod's control consumer wrote it
    await asyncio.wait_for(run, 60)
    assert backend.steps < LONG_RUN_STEPS
    only_cancelled_failure(broker, topics)


async def test_cancel_after_the_last_step_still_publishes_no_image(
    store: PgCancellationStore,
) -> None:
    class CancelledAtTheEnd(ScriptedBackend):
        def generate(
            self, request: GenerationRequest, on_progress: object, cancel: CancelToken
        ) -> GeneratedImage:
            image = super().generate(request, on_progress, cancel)
            cancel.set()  # as if the notification landed between the last step and here
            return image

    generator, broker, topics = generator_with(CancelledAtTheEnd("demo"), CancelWatch(store))
    await generator.on_job(record_of(make_job(), topics))
    only_cancelled_failure(broker, topics)
