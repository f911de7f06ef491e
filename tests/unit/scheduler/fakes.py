"""A scheduler under test and a scripted generator, over any broker that implements the ports.

`SchedulerRig` runs the real scheduler (handlers, ledger, outbox relay, ticker) against a
broker (in-memory or Tansu) and a real PostgreSQL; `FakeGenerator` answers jobs with the
events a generator + postprocess + storage would emit, as a policy decides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from imagegen.db import create_pool, migrate
from imagegen.kafka import Consumer, ConsumerLoop, Handler, Publisher, Record
from imagegen.kafka.codec import decode
from schemas.base import Message
from schemas.events import (
    EVENT_ADAPTER,
    ConsistencyFlagged,
    ConsistencyFlaggedData,
    EventBase,
    GenerationCompleted,
    GenerationCompletedData,
    GenerationFailed,
    GenerationFailedData,
    GenerationStarted,
    GenerationStartedData,
    ImageStored,
    ImageStoredData,
    StoredRendition,
    image_event,
)
from schemas.jobs import GenerateImage
from schemas.topics import TopicNames
from services.scheduler.handlers import Scheduler
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.settings import SchedulerSettings

GEN = "imagegen/generator"
Outcome = Literal[
    "ok", "fail", "fail_permanent", "refuse", "unsafe", "flag", "hold", "silent", "image_lost"
]
"""`silent`: started, then nothing (a generator that hung); `image_lost`: started and
completed, then nothing (the image lost on its way to storage); `hold`: nothing at all."""


def catalogue_json(*offers: tuple[str, str, str]) -> str:
    """Offers as (provider, per-image price, quality), cheapest first by price."""
    import json

    return json.dumps(
        [
            {"provider": p, "model": f"{p}-model", "quality": q, "price_per_image_usd": price}
            for p, price, q in offers
        ]
    )


def started(job: GenerateImage) -> GenerationStarted:
    img = job.image
    return image_event(
        GenerationStarted,
        img,
        img.attempt,
        source=GEN,
        data=GenerationStartedData(
            image_id=img.image_id,
            image_index=img.image_index,
            attempt=img.attempt,
            backend=job.provider or "fake",
            model=job.model or "m",
            queue_wait_ms=1,
        ),
    )


def completed(job: GenerateImage, cost: Decimal | float) -> GenerationCompleted:
    img = job.image
    return image_event(
        GenerationCompleted,
        img,
        img.attempt,
        img.variation,
        source=GEN,
        data=GenerationCompletedData(
            image_id=img.image_id,
            image_index=img.image_index,
            duration_ms=5,
            backend=job.provider or "fake",
            model=job.model or "m",
            seed=job.seed,
            cost_usd=float(cost),
            provider=job.provider or "",
        ),
    )


def stored(job: GenerateImage, cost: Decimal | float, *, flagged: bool = False) -> ImageStored:
    img = job.image
    base = f"users/{img.user_id}/images/{img.image_id}/v{img.version}"
    return image_event(
        ImageStored,
        img,
        img.version,
        source="imagegen/storage",
        data=ImageStoredData(
            image_id=img.image_id,
            image_index=img.image_index,
            character_id=img.character_id,
            kind=img.kind.value,
            version=img.version,
            size_bytes=10,
            width=job.width,
            height=job.height,
            renditions=[
                StoredRendition(
                    name=n,
                    key=f"{base}/{n}",
                    size_bytes=1,
                    width=1,
                    height=1,
                    format="png",
                    content_type="image/png",
                )
                for n in ("original", "display", "thumbnail")
            ],
            seed=job.seed,
            model=job.model or "m",
            backend=job.provider or "fake",
            provider=job.provider or "",
            demo=False,
            cost_usd=float(cost),
            flagged=flagged,
        ),
    )


def failed(
    job: GenerateImage, *, retryable: bool = True, error_type: str = "Boom"
) -> GenerationFailed:
    img = job.image
    return image_event(
        GenerationFailed,
        img,
        img.attempt,
        img.variation,
        source=GEN,
        data=GenerationFailedData(
            image_id=img.image_id,
            image_index=img.image_index,
            attempt=img.attempt,
            error_type=error_type,
            error=f"{job.provider} exploded",
            retryable=retryable,
            final=False,
            provider=job.provider or "",
        ),
    )


def flagged(job: GenerateImage, *, final: bool = False) -> ConsistencyFlagged:
    img = job.image
    return image_event(
        ConsistencyFlagged,
        img,
        img.version,
        img.variation,
        source="imagegen/postprocess",
        data=ConsistencyFlaggedData(
            image_id=img.image_id,
            image_index=img.image_index,
            version=img.version,
            variation=img.variation,
            score=0.2,
            threshold=0.5,
            final=final,
        ),
    )


Policy = Callable[[GenerateImage], Outcome]


@dataclass
class FakeGenerator:
    """Answers each job as `policy` says; `cost` is what an image actually costs."""

    consumer: Consumer
    publisher: Publisher
    topics: TopicNames
    policy: Policy = lambda _job: "ok"
    cost: Decimal = Decimal("0.5")
    seen: list[GenerateImage] = field(default_factory=list)
    held: list[GenerateImage] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stop.set()

    async def emit(self, event: EventBase) -> None:
        await self.publisher.publish(self.topics.events, event.job_id, event)

    async def answer(self, job: GenerateImage, outcome: Outcome) -> None:
        if outcome == "ok":
            await self.emit(completed(job, self.cost))
            await self.emit(stored(job, self.cost))
        elif outcome == "flag":
            await self.emit(completed(job, self.cost))
            final = job.image.variation >= job.max_variations
            await self.emit(flagged(job, final=final))
            if final:
                await self.emit(stored(job, self.cost, flagged=True))
        elif outcome == "fail":
            await self.emit(failed(job))
        elif outcome == "fail_permanent":
            await self.emit(failed(job, retryable=False, error_type="ProviderUnavailable"))
        elif outcome == "refuse":  # what the worker says for a safety-system refusal
            await self.emit(failed(job, retryable=False, error_type="ContentPolicyViolation"))
        elif outcome == "unsafe":  # what postprocess says when the safety check refuses
            await self.emit(failed(job, retryable=True, error_type="ContentPolicyViolation"))
        elif outcome == "silent":
            await self.emit(started(job))
        elif outcome == "image_lost":
            await self.emit(started(job))
            await self.emit(completed(job, self.cost))
        else:
            self.held.append(job)

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                record = await self.consumer.poll(0.05)
                if record is None:
                    continue
                job = decode(record, GenerateImage)
                self.seen.append(job)
                await self.answer(job, self.policy(job))
                await self.consumer.commit(record)
        finally:
            await self.consumer.close()


@dataclass
class SchedulerRig:
    scheduler: Scheduler
    pool: asyncpg.Pool
    publisher: Publisher
    topics: TopicNames
    records: Callable[[str], Awaitable[list[Record]]]

    async def submit(self, request: Message, key: str) -> None:
        await self.publisher.publish(self.topics.requests, key, request)

    async def jobs(self) -> list[GenerateImage]:
        out = []
        for topic in self.topics.all_jobs():
            out += [GenerateImage.model_validate_json(r.value) for r in await self.records(topic)]
        return out

    async def events(self) -> list[Any]:
        return [
            EVENT_ADAPTER.validate_json(r.value) for r in await self.records(self.topics.events)
        ]

    async def wait(
        self, predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await predicate():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    async def wait_event(self, event_type: str, job_id: str, timeout: float = 30) -> Any:
        found: list[Any] = []

        async def seen() -> bool:
            found[:] = [
                e for e in await self.events() if e.type == event_type and e.job_id == job_id
            ]
            return bool(found)

        await self.wait(seen, f"{event_type} of {job_id}", timeout)
        return found[0]


def fast_settings(**overrides: Any) -> SchedulerSettings:
    values: dict[str, Any] = {
        "default_steps": 4,
        "retry_backoff_s": 0.05,
        "tick_interval_s": 0.02,
        "relay_interval_s": 0.05,
        "catalogue": catalogue_json(("cheap", "1.00", "high")),
        "daily_budget_usd": Decimal("500"),
    }
    values.update(overrides)
    return SchedulerSettings(**values)


@asynccontextmanager
async def scheduler_rig(
    database_url: str,
    settings: SchedulerSettings,
    publisher: Publisher,
    topics: TopicNames,
    consumer_for: Callable[[str, list[str]], Consumer],
    records: Callable[[str], Awaitable[list[Record]]],
    *,
    instances: int = 1,
) -> AsyncIterator[SchedulerRig]:
    """`instances` schedulers (own pools, same consumer groups), loops and background running."""
    async with AsyncExitStack() as stack:
        tasks: list[asyncio.Task[None]] = []
        loops: list[ConsumerLoop] = []
        schedulers: list[Scheduler] = []
        first_pool: asyncpg.Pool | None = None
        for _ in range(instances):
            pool = await create_pool(database_url, "scheduler", max_size=10)
            stack.push_async_callback(pool.close)
            await migrate(pool, "scheduler", MIGRATIONS)
            first_pool = first_pool or pool
            scheduler = Scheduler(settings, pool, publisher, topics)
            schedulers.append(scheduler)
            # As the service runs it (services/scheduler/__main__.py): one consumer on both
            # topics; records handed over together share a transaction.
            handlers: dict[str, Handler] = {
                topics.requests: scheduler.on_request,
                topics.events: scheduler.on_event,
            }
            loops.append(
                ConsumerLoop(
                    name="scheduler",
                    consumer=consumer_for("scheduler", list(handlers)),
                    handlers=handlers,
                    batch_handlers={
                        topics.requests: scheduler.on_requests,
                        topics.events: scheduler.on_events,
                    },
                    dead_letters=publisher,
                    dead_letter_topic=topics.dead_letter,
                    backoff_initial=0.01,
                    poll_timeout=0.05,
                )
            )
        tasks += [asyncio.create_task(lp.run()) for lp in loops]
        tasks += [asyncio.create_task(s.run_background()) for s in schedulers]
        assert first_pool is not None
        try:
            yield SchedulerRig(schedulers[0], first_pool, publisher, topics, records)
        finally:
            for lp in loops:
                lp.stop()
            for s in schedulers:
                s.stop_background()
            await asyncio.gather(*tasks, return_exceptions=True)
