"""The `generation_jobs` table: each job's priority, status, timings, retries, last error and
cost, kept from the events topic (generation_queued/started/completed/failed,
pack_completed, job_cancelled).

Events of one job come from three services, so they can arrive out of order and more than
once. Each event is applied at most once (its id is recorded in `applied_events` in the
same transaction, and kept for IMAGEGEN_APPLIED_EVENTS_RETENTION_S, longer than any copy
of it can still arrive: see `cleanup.applied_events_pruner`), and states only move forward:
an image's events are ordered by (attempt, stage), its final failure is terminal, and a
completed image can still be retried (postprocess rejected it, or the consistency loop
asked for a variation: both come back as a higher attempt); a job goes queued -> running
-> terminal, and a terminal status is never overwritten by a late event. Once the job has
ended, the scheduler's pack_completed figures (counts, settled cost, duration) are kept.
"""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg
from pydantic import TypeAdapter

from imagegen.db import transient_as_retryable
from imagegen.kafka import Record, decode
from schemas.base import Contract
from schemas.events import (
    EVENT_ADAPTER,
    Event,
    GenerationCompleted,
    GenerationFailed,
    GenerationQueued,
    GenerationStarted,
    JobCancelled,
    JobStatus,
    PackCompleted,
)

log = logging.getLogger(__name__)

TRACKED = frozenset(
    {
        "generation_queued",
        "generation_started",
        "generation_completed",
        "generation_failed",
        "pack_completed",
        "job_cancelled",
    }
)
# Stages of one attempt, in order; FAILED (no attempt left) is terminal.
QUEUED, RUNNING, COMPLETED, RETRYING, FAILED = 1, 2, 3, 4, 5
_JOB_RANK = {JobStatus.QUEUED.value: 1, JobStatus.RUNNING.value: 2}
_TERMINAL_RANK = 3


class _Kind(Contract):
    type: str


_KIND: TypeAdapter[_Kind] = TypeAdapter(_Kind)


def _rank(status: str) -> int:
    return _JOB_RANK.get(status, _TERMINAL_RANK)


class JobTracker:
    """Consumes `events` and keeps `generation_jobs` / `generation_job_images`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def on_event(self, record: Record) -> None:
        # Most events (progress above all) are not tracked: look at the type only.
        if decode(record, _KIND).type not in TRACKED:
            return
        event = decode(record, EVENT_ADAPTER)
        if event.job_id is None:
            return
        async with transient_as_retryable(), self._pool.acquire() as conn, conn.transaction():
            fresh = await conn.fetchval(
                "INSERT INTO applied_events (event_id) VALUES ($1)"
                " ON CONFLICT DO NOTHING RETURNING true",
                event.id,
            )
            if not fresh:
                log.debug("event=job_event_seen_before id=%s", event.id)
                return
            await apply(conn, event.job_id, event)


async def apply(conn: asyncpg.Connection, job_id: str, event: Event) -> None:
    await conn.execute(
        "INSERT INTO generation_jobs (job_id, user_id, status) VALUES ($1, $2, 'queued')"
        " ON CONFLICT (job_id) DO NOTHING",
        job_id,
        event.user_id or "",
    )
    job = await conn.fetchrow(
        "SELECT status FROM generation_jobs WHERE job_id = $1 FOR UPDATE", job_id
    )
    status: str = job["status"]
    if isinstance(event, GenerationQueued):
        data = event.data
        await _image(
            conn,
            job_id,
            data.image_index,
            data.image_id,
            data.attempt,
            QUEUED,
            event.time,
            "queued",
        )
        await conn.execute(
            "UPDATE generation_job_images SET attempts = greatest(attempts, $3),"
            " queued_at = least(queued_at, $4), provider = coalesce($5, provider),"
            " model = coalesce($6, model), estimated_cost_usd = CASE WHEN $3 >= attempts"
            "   THEN $7 ELSE estimated_cost_usd END"
            " WHERE job_id = $1 AND image_index = $2",
            job_id,
            data.image_index,
            data.attempt,
            event.time,
            data.provider,
            data.model,
            data.estimated_cost_usd,
        )
        await conn.execute(
            "UPDATE generation_jobs SET tier = coalesce(tier, $2),"
            " kind = CASE WHEN $4 = 0 OR kind IS NULL THEN $3 ELSE kind END,"
            " image_count = coalesce(image_count, $5), queued_at = least(queued_at, $6)"
            " WHERE job_id = $1",
            job_id,
            data.tier,
            data.kind,
            data.image_index,
            data.image_count,
            event.time,
        )
    elif isinstance(event, GenerationStarted):
        data_s = event.data
        await _image(
            conn,
            job_id,
            data_s.image_index,
            data_s.image_id,
            data_s.attempt,
            RUNNING,
            event.time,
            "running",
        )
        await conn.execute(
            "UPDATE generation_job_images SET attempts = greatest(attempts, $3),"
            " started_at = least(started_at, $4), queue_wait_ms = $5, model = $6"
            " WHERE job_id = $1 AND image_index = $2",
            job_id,
            data_s.image_index,
            data_s.attempt,
            event.time,
            data_s.queue_wait_ms,
            data_s.model,
        )
        await conn.execute(
            "UPDATE generation_jobs SET started_at = least(started_at, $2) WHERE job_id = $1",
            job_id,
            event.time,
        )
        if _rank(status) < _rank(JobStatus.RUNNING.value):
            status = JobStatus.RUNNING.value
    elif isinstance(event, GenerationCompleted):
        data_c = event.data
        await _image(
            conn,
            job_id,
            data_c.image_index,
            data_c.image_id,
            None,  # completion carries no attempt: it completes the latest one seen
            COMPLETED,
            event.time,
            "completed",
        )
        # Every generation is paid for, consistency variations included: costs add up.
        await conn.execute(
            "UPDATE generation_job_images SET cost_usd = cost_usd + $3, duration_ms = $4,"
            " provider = coalesce(nullif($5, ''), provider), model = $6"
            " WHERE job_id = $1 AND image_index = $2",
            job_id,
            data_c.image_index,
            data_c.cost_usd,
            data_c.duration_ms,
            data_c.provider,
            data_c.model,
        )
    elif isinstance(event, GenerationFailed):
        data_f = event.data
        stage, outcome = (FAILED, "failed") if data_f.final else (RETRYING, "retrying")
        await _image(
            conn,
            job_id,
            data_f.image_index,
            data_f.image_id,
            data_f.attempt,
            stage,
            event.time,
            outcome,
        )
        await conn.execute(
            "UPDATE generation_job_images SET attempts = greatest(attempts, $3),"
            " last_error = $4, last_error_type = $5"
            " WHERE job_id = $1 AND image_index = $2",
            job_id,
            data_f.image_index,
            data_f.attempt,
            data_f.error,
            data_f.error_type,
        )
        await conn.execute(
            "UPDATE generation_jobs SET last_error = $2, last_error_type = $3, last_error_at = $4"
            " WHERE job_id = $1 AND (last_error_at IS NULL OR last_error_at <= $4)",
            job_id,
            data_f.error,
            data_f.error_type,
            event.time,
        )
    elif isinstance(event, PackCompleted):
        data_p = event.data
        if _rank(status) < _TERMINAL_RANK:
            status = data_p.status.value
        # The scheduler's figures (stored count, settled cost) stand from here on, also
        # when job_cancelled came first.
        await conn.execute(
            "UPDATE generation_jobs SET settled = true, image_count = $2, completed_count = $3,"
            " failed_count = $4, total_ms = $5, cost_usd = $6,"
            " reason_code = coalesce($7, reason_code), finished_at = coalesce(finished_at, $8)"
            " WHERE job_id = $1",
            job_id,
            data_p.image_count,
            data_p.completed_count,
            data_p.failed_count,
            data_p.total_duration_ms,
            data_p.cost_usd,
            data_p.reason_code,
            event.time,
        )
    elif isinstance(event, JobCancelled) and _rank(status) < _TERMINAL_RANK:
        status = JobStatus.CANCELLED.value
        await conn.execute(
            "UPDATE generation_jobs SET reason_code = 'cancelled', finished_at = $2"
            " WHERE job_id = $1",
            job_id,
            event.time,
        )
    await _roll_up(conn, job_id, status)


async def _image(
    conn: asyncpg.Connection,
    job_id: str,
    index: int,
    image_id: str,
    attempt: int | None,
    stage: int,
    at: datetime,
    status: str,
) -> None:
    """Move the image's state forward to (attempt, stage) unless it is already further."""
    await conn.execute(
        "INSERT INTO generation_job_images (job_id, image_index, image_id, status)"
        " VALUES ($1, $2, $3, 'queued') ON CONFLICT (job_id, image_index) DO NOTHING",
        job_id,
        index,
        image_id,
    )
    await conn.execute(
        "UPDATE generation_job_images SET status = $5, stage = $4,"
        " state_attempt = coalesce($3, greatest(state_attempt, attempts, 1)),"
        " finished_at = CASE WHEN $4 IN (3, 5) THEN $6::timestamptz END"
        " WHERE job_id = $1 AND image_index = $2 AND stage < 5 AND ($4 = 5"
        "   OR (coalesce($3, greatest(state_attempt, attempts, 1)), $4) > (state_attempt, stage))",
        job_id,
        index,
        attempt,
        stage,
        status,
        at,
    )


async def _roll_up(conn: asyncpg.Connection, job_id: str, status: str) -> None:
    """Job figures from its images; once ended, pack_completed's figures stand."""
    await conn.execute(
        "UPDATE generation_jobs j SET status = $2, updated_at = now(),"
        " attempts = i.attempts, retries = i.retries,"
        " estimated_cost_usd = i.estimated,"
        " completed_count = CASE WHEN j.settled THEN j.completed_count ELSE i.completed END,"
        " failed_count = CASE WHEN j.settled THEN j.failed_count ELSE i.failed END,"
        " cost_usd = CASE WHEN j.settled THEN j.cost_usd ELSE i.cost END,"
        " queue_wait_ms = (extract(epoch FROM j.started_at - j.queued_at) * 1000)::bigint,"
        " run_ms = (extract(epoch FROM j.finished_at - j.started_at) * 1000)::bigint,"
        " total_ms = CASE WHEN j.settled THEN j.total_ms ELSE"
        "   (extract(epoch FROM j.finished_at - j.queued_at) * 1000)::bigint END"
        " FROM (SELECT coalesce(sum(attempts), 0) AS attempts,"
        "   coalesce(sum(greatest(attempts - 1, 0)), 0) AS retries,"
        "   coalesce(sum(estimated_cost_usd), 0) AS estimated,"
        "   coalesce(sum(cost_usd), 0) AS cost,"
        "   count(*) FILTER (WHERE status = 'completed') AS completed,"
        "   count(*) FILTER (WHERE status = 'failed') AS failed"
        "   FROM generation_job_images WHERE job_id = $1) i"
        " WHERE j.job_id = $1",
        job_id,
        status,
    )
