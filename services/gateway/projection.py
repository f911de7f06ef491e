"""The read model: jobs, images and the event log, projected from the `events` topic.

Each event is applied in one transaction: appended to the log (deduplicated on its id,
a duplicate changes nothing), given the next per-job `seq`, then folded into its job
and image rows. Streams are woken only after the commit.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from imagegen.db import transient_as_retryable
from imagegen.kafka import Record, decode
from schemas.events import (
    EVENT_ADAPTER,
    Event,
    GenerationFailed,
    GenerationQueued,
    ImageStored,
    JobCancelled,
    JobStatus,
    PackCompleted,
)
from schemas.requests import JobKind
from services.gateway.notify import EventSignal

log = logging.getLogger(__name__)

# Appends are serialised (across replicas too) so that event ids become visible in id
# order: a stream that has read up to id N can never later miss an id below N.
_EVENT_LOG_LOCK = 0x6761_7465_7761_79  # "gateway"

_PROGRESS_RANK = {JobStatus.ACCEPTED: 0, JobStatus.QUEUED: 1, JobStatus.RUNNING: 2}
_IMPLIED_STATUS = {
    "generation_queued": JobStatus.QUEUED,
    "generation_started": JobStatus.RUNNING,
    "generation_progress": JobStatus.RUNNING,
    "generation_completed": JobStatus.RUNNING,
    "image_stored": JobStatus.RUNNING,
}


def next_status(current: JobStatus, event: Event) -> JobStatus:
    """Statuses only move forward; a cancelled job stays cancelled."""
    if current is JobStatus.CANCELLED:
        return current
    if isinstance(event, JobCancelled):
        return JobStatus.CANCELLED
    if isinstance(event, PackCompleted):
        return event.data.status
    implied = _IMPLIED_STATUS.get(event.type)
    if current.terminal or implied is None:
        return current
    return implied if _PROGRESS_RANK[implied] > _PROGRESS_RANK[current] else current


@dataclass
class _Job:
    user_id: str
    status: JobStatus
    seq: int


class Projection:
    def __init__(self, pool: asyncpg.Pool, signal: EventSignal) -> None:
        self._pool = pool
        self._signal = signal

    async def handle(self, record: Record) -> None:
        """The consumer loop's handler for the events topic."""
        event = decode(record, EVENT_ADAPTER)
        async with transient_as_retryable():
            owner = await self.apply(event)
        if owner is not None:
            self._signal.notify(owner)

    async def apply(self, event: Event) -> str | None:
        """Project one event; returns the user to wake, None for a duplicate or ownerless one."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _EVENT_LOG_LOCK)
            row_id = await conn.fetchval(
                "INSERT INTO events (event_id, job_id, user_id, type, payload)"
                " VALUES ($1, $2, $3, $4, '{}') ON CONFLICT (event_id) DO NOTHING RETURNING id",
                event.id,
                event.job_id,
                event.user_id,
                event.type,
            )
            if row_id is None:
                log.info("event=duplicate_event_ignored event_id=%s type=%s", event.id, event.type)
                return None
            owner, seq = event.user_id, None
            if event.job_id is not None:
                job = await _touch_job(conn, event.job_id, event)
                if job is not None:
                    owner, seq = job.user_id, job.seq
                    await _fold(conn, event.job_id, job, event)
            payload = event.model_copy(update={"seq": seq, "user_id": owner})
            await conn.execute(
                "UPDATE events SET seq = $2, user_id = $3, payload = $4::jsonb WHERE id = $1",
                row_id,
                seq,
                owner,
                payload.model_dump_json(),
            )
        return owner


async def _touch_job(conn: asyncpg.Connection, job_id: str, event: Event) -> _Job | None:
    """Take the job's next seq, creating the row when the gateway has none for it."""
    if event.user_id is None:
        row = await conn.fetchrow(
            "UPDATE jobs SET last_seq = last_seq + 1, updated_at = now() WHERE id = $1"
            " RETURNING user_id, status, last_seq",
            job_id,
        )
    else:
        kind = event.data.kind if isinstance(event, ImageStored) else JobKind.PACK.value
        row = await conn.fetchrow(
            "INSERT INTO jobs (id, user_id, kind, status, last_seq) VALUES ($1, $2, $3, $4, 1)"
            " ON CONFLICT (id) DO UPDATE SET last_seq = jobs.last_seq + 1, updated_at = now()"
            " RETURNING user_id, status, last_seq",
            job_id,
            event.user_id,
            kind,
            JobStatus.ACCEPTED.value,
        )
    if row is None:
        log.warning("event=event_without_owner job_id=%s type=%s", job_id, event.type)
        return None
    return _Job(user_id=row["user_id"], status=JobStatus(row["status"]), seq=row["last_seq"])


async def _fold(conn: asyncpg.Connection, job_id: str, job: _Job, event: Event) -> None:
    completed = failed = total = 0
    character_id: str | None = None
    if isinstance(event, GenerationQueued):
        total, character_id = event.data.image_count, event.data.character_id
    elif isinstance(event, ImageStored):
        completed = await _upsert_image(conn, job_id, job.user_id, event)
    elif isinstance(event, GenerationFailed) and event.data.final:
        inserted = await conn.fetchval(
            "INSERT INTO image_failures (job_id, image_index) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            job_id,
            event.data.image_index,
        )
        failed = 1 if inserted else 0
    elif isinstance(event, PackCompleted):
        total = event.data.image_count
    status = next_status(job.status, event)
    await conn.execute(
        "UPDATE jobs SET status = $2, total = GREATEST(total, $3),"
        " completed = completed + $4, failed = failed + $5,"
        " character_id = COALESCE(character_id, $6),"
        " finished_at = CASE WHEN $7 THEN COALESCE(finished_at, now()) ELSE finished_at END"
        " WHERE id = $1",
        job_id,
        status.value,
        total,
        completed,
        failed,
        character_id,
        status.terminal,
    )


async def _upsert_image(
    conn: asyncpg.Connection, job_id: str, user_id: str, event: ImageStored
) -> int:
    """Insert or refresh (newer version) the image; 1 when it is new to the job."""
    data = event.data
    renditions: dict[str, Any] = {r.name: r.model_dump(exclude={"name"}) for r in data.renditions}
    inserted = await conn.fetchval(
        "INSERT INTO images (id, job_id, user_id, index, character_id, version, renditions,"
        " width, height, size_bytes, seed, model, demo)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13)"
        " ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version,"
        " renditions = EXCLUDED.renditions, width = EXCLUDED.width, height = EXCLUDED.height,"
        " size_bytes = EXCLUDED.size_bytes, seed = EXCLUDED.seed, model = EXCLUDED.model,"
        " demo = EXCLUDED.demo WHERE images.version < EXCLUDED.version"
        " RETURNING (xmax = 0)",
        data.image_id,
        job_id,
        user_id,
        data.image_index,
        data.character_id,
        data.version,
        json.dumps(renditions),
        data.width,
        data.height,
        data.size_bytes,
        data.seed,
        data.model,
        data.demo,
    )
    return 1 if inserted else 0
