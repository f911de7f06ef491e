"""Handlers: requests become jobs; image outcomes close packs."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import asyncpg

from imagegen.db import transient_as_retryable
from imagegen.events import EventEmitter
from imagegen.kafka import Publisher, Record, decode
from schemas.events import (
    EVENT_ADAPTER,
    GenerationFailed,
    GenerationQueued,
    GenerationQueuedData,
    ImageStored,
    JobCancelled,
    JobCancelledData,
    JobStatus,
    PackCompleted,
    PackCompletedData,
    event_id,
    image_envelope,
)
from schemas.jobs import GenerateImage
from schemas.requests import REQUEST_ADAPTER, CancelJob, GenerateImages
from schemas.topics import TopicNames
from services.scheduler.expansion import expand
from services.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)
SOURCE = "imagegen/scheduler"


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        pool: asyncpg.Pool,
        publisher: Publisher,
        topics: TopicNames,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._publisher = publisher
        self._topics = topics
        self._events = EventEmitter(publisher, topics.events, SOURCE)

    # --- requests ---------------------------------------------------------------------

    async def on_request(self, record: Record) -> None:
        request = decode(record, REQUEST_ADAPTER)
        if isinstance(request, GenerateImages):
            await self._schedule(request)
        elif isinstance(request, CancelJob):
            await self._cancel(request)
        # Deletes and reviews belong to storage; nothing to do here.

    async def _schedule(self, request: GenerateImages) -> None:
        jobs = expand(
            request, steps=self._settings.default_steps, guidance=self._settings.default_guidance
        )
        async with transient_as_retryable(), self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO jobs (job_id, user_id, tier, kind, image_count, status, request)"
                " VALUES ($1, $2, $3, $4, $5, 'queued', $6) ON CONFLICT (job_id) DO NOTHING",
                request.job_id,
                request.user_id,
                request.tier.value,
                request.kind.value,
                request.image_count,
                request.model_dump_json(),
            )
            row = await conn.fetchrow(
                "SELECT expanded, user_id FROM jobs WHERE job_id = $1 FOR UPDATE", request.job_id
            )
            if row["user_id"] != request.user_id or row["expanded"]:
                return  # a redelivery (or a forged id): the job was scheduled already
            await conn.executemany(
                "INSERT INTO job_images (job_id, image_index, image_id, status, message)"
                " VALUES ($1, $2, $3, 'queued', $4) ON CONFLICT DO NOTHING",
                [
                    (j.image.job_id, j.image.image_index, j.image.image_id, j.model_dump_json())
                    for j in jobs
                ],
            )
            # Publish inside the transaction: if any send fails nothing is marked expanded
            # and the redelivered request sends the same (idempotent) messages again.
            await asyncio.gather(*(self._enqueue(job) for job in jobs))
            await conn.execute("UPDATE jobs SET expanded = true WHERE job_id = $1", request.job_id)
        log.info("event=job_scheduled job_id=%s images=%d", request.job_id, len(jobs))

    async def _enqueue(self, job: GenerateImage) -> None:
        await self._publisher.publish(self._topics.jobs(job.tier), job.image.job_id, job)
        img = job.image
        await self._events.emit(
            GenerationQueued(
                **image_envelope(img, "generation_queued", img.attempt),
                data=GenerationQueuedData(
                    image_id=img.image_id,
                    image_index=img.image_index,
                    image_count=img.image_count,
                    character_id=img.character_id,
                    tier=job.tier.value,
                    attempt=img.attempt,
                ),
            )
        )

    async def _cancel(self, request: CancelJob) -> None:
        async with transient_as_retryable(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, user_id FROM jobs WHERE job_id = $1 FOR UPDATE", request.job_id
            )
            if row is None or row["user_id"] != request.user_id:
                return
            if JobStatus(row["status"]).terminal and row["status"] != JobStatus.CANCELLED:
                return
            await conn.execute(
                "UPDATE job_images SET status = 'cancelled', updated_at = now()"
                " WHERE job_id = $1 AND status = 'queued'",
                request.job_id,
            )
            await conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = coalesce(finished_at, now())"
                " WHERE job_id = $1",
                request.job_id,
            )
            await self._events.emit(
                JobCancelled(
                    id=event_id("job_cancelled", request.job_id),
                    source=SOURCE,
                    subject=f"jobs/{request.job_id}",
                    job_id=request.job_id,
                    user_id=request.user_id,
                    data=JobCancelledData(),
                )
            )

    # --- outcomes ---------------------------------------------------------------------

    async def on_event(self, record: Record) -> None:
        event = decode(record, EVENT_ADAPTER)
        if isinstance(event, ImageStored) and event.job_id:
            await self._settle(event.job_id, event.data.image_index, "stored", None)
        elif isinstance(event, GenerationFailed) and event.job_id:
            if event.data.final:
                await self._settle(event.job_id, event.data.image_index, "failed", event.data.error)
            else:
                await self._retry(event.job_id, event.data.image_index, event.data.attempt)

    async def _retry(self, job_id: str, index: int, failed_attempt: int) -> None:
        async with transient_as_retryable(), self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, attempt, message FROM job_images"
                " WHERE job_id = $1 AND image_index = $2 FOR UPDATE",
                job_id,
                index,
            )
            if row is None or row["status"] != "queued" or row["attempt"] != failed_attempt:
                return  # settled already, or this retry was issued before
            job = GenerateImage.model_validate_json(row["message"])
            retry = job.model_copy(
                update={"image": job.image.model_copy(update={"attempt": failed_attempt + 1})}
            )
            await conn.execute(
                "UPDATE job_images SET attempt = $3, message = $4, updated_at = now()"
                " WHERE job_id = $1 AND image_index = $2",
                job_id,
                index,
                failed_attempt + 1,
                retry.model_dump_json(),
            )
            await self._enqueue(retry)

    async def _settle(self, job_id: str, index: int, status: str, error: str | None) -> None:
        async with transient_as_retryable(), self._pool.acquire() as conn, conn.transaction():
            job = await conn.fetchrow(
                "SELECT user_id, status, image_count, created_at FROM jobs"
                " WHERE job_id = $1 FOR UPDATE",
                job_id,
            )
            if job is None:
                log.warning("event=outcome_for_unknown_job job_id=%s", job_id)
                return
            await conn.execute(
                "UPDATE job_images SET status = $3, error = $4, updated_at = now()"
                " WHERE job_id = $1 AND image_index = $2 AND status IN ('queued', 'cancelled')",
                job_id,
                index,
                status,
                error,
            )
            counts = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'stored') AS stored,"
                " count(*) FILTER (WHERE status = 'failed') AS failed,"
                " count(*) FILTER (WHERE status = 'queued') AS pending"
                " FROM job_images WHERE job_id = $1",
                job_id,
            )
            if counts["pending"] > 0 or JobStatus(job["status"]).terminal:
                return
            stored, failed = counts["stored"], counts["failed"]
            final = (
                JobStatus.COMPLETED
                if failed == 0
                else JobStatus.FAILED
                if stored == 0
                else JobStatus.PARTIALLY_COMPLETED
            )
            duration = datetime.now(UTC) - job["created_at"]
            await self._events.emit(
                PackCompleted(
                    id=event_id("pack_completed", job_id),
                    source=SOURCE,
                    subject=f"jobs/{job_id}",
                    job_id=job_id,
                    user_id=job["user_id"],
                    data=PackCompletedData(
                        status=final,
                        image_count=job["image_count"],
                        completed_count=stored,
                        failed_count=failed,
                        total_duration_ms=int(duration.total_seconds() * 1000),
                    ),
                )
            )
            await conn.execute(
                "UPDATE jobs SET status = $2, finished_at = now() WHERE job_id = $1",
                job_id,
                final.value,
            )
            log.info(
                "event=pack_completed job_id=%s status=%s stored=%d failed=%d",
                job_id,
                final.value,
                stored,
                failed,
            )
