"""Storage's generation_jobs table follows a job through its events (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from imagegen.kafka import Record, encode
from schemas.events import (
    EventBase,
    GenerationCompleted,
    GenerationCompletedData,
    GenerationFailed,
    GenerationFailedData,
    GenerationProgress,
    GenerationProgressData,
    GenerationQueued,
    GenerationQueuedData,
    GenerationStarted,
    GenerationStartedData,
    JobCancelled,
    JobCancelledData,
    JobStatus,
    PackCompleted,
    PackCompletedData,
    event_id,
)
from services.storage.jobs import JobTracker

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _env(kind: str, job: str, *parts: object, seconds: float) -> dict[str, object]:
    return {
        "id": event_id(kind, job, *parts),
        "source": "test",
        "subject": f"jobs/{job}",
        "job_id": job,
        "user_id": "u1",
        "time": T0 + timedelta(seconds=seconds),
    }


def queued(job: str, index: int, attempt: int, at: float, count: int = 2) -> GenerationQueued:
    return GenerationQueued(
        **_env("generation_queued", job, index, attempt, seconds=at),
        data=GenerationQueuedData(
            image_id=f"img{index}",
            image_index=index,
            image_count=count,
            character_id="c1",
            tier="realtime",
            attempt=attempt,
            kind="portrait" if index == 0 else "reference",
            provider="p",
            model="m",
            estimated_cost_usd=0.04,
        ),
    )


def started(job: str, index: int, attempt: int, at: float) -> GenerationStarted:
    return GenerationStarted(
        **_env("generation_started", job, index, attempt, seconds=at),
        data=GenerationStartedData(
            image_id=f"img{index}",
            image_index=index,
            attempt=attempt,
            backend="b",
            model="m",
            queue_wait_ms=500,
        ),
    )


def failed(job: str, index: int, attempt: int, at: float, final: bool) -> GenerationFailed:
    return GenerationFailed(
        **_env("generation_failed", job, index, attempt, seconds=at),
        data=GenerationFailedData(
            image_id=f"img{index}",
            image_index=index,
            attempt=attempt,
            error_type="ProviderError",
            error=f"boom {attempt}",
            retryable=not final,
            final=final,
        ),
    )


def completed(job: str, index: int, attempt: int, at: float) -> GenerationCompleted:
    return GenerationCompleted(
        **_env("generation_completed", job, index, attempt, seconds=at),
        data=GenerationCompletedData(
            image_id=f"img{index}",
            image_index=index,
            duration_ms=1200,
            backend="b",
            model="m",
            seed=1,
            cost_usd=0.03,
            provider="p",
        ),
    )


def pack(job: str, at: float, status: JobStatus, done: int, failed: int) -> PackCompleted:
    return PackCompleted(
        **_env("pack_completed", job, seconds=at),
        data=PackCompletedData(
            status=status,
            image_count=2,
            completed_count=done,
            failed_count=failed,
            total_duration_ms=9000,
            cost_usd=0.06 if done == 2 else 0.03,
        ),
    )


async def _feed(tracker: JobTracker, *events: EventBase) -> None:
    for offset, event in enumerate(events):
        await tracker.on_event(
            Record(topic="events", partition=0, offset=offset, key=None, value=encode(event))
        )


async def _job(storage_pool: asyncpg.Pool, job: str) -> asyncpg.Record:
    row: asyncpg.Record = await storage_pool.fetchrow(
        "SELECT * FROM generation_jobs WHERE job_id = $1", job
    )
    return row


async def test_a_job_with_a_retry_is_followed_to_completion(storage_pool: asyncpg.Pool) -> None:
    tracker = JobTracker(storage_pool)
    progress = GenerationProgress(
        **_env("generation_progress", "j1", 0, 1, seconds=2),
        data=GenerationProgressData(image_id="img0", image_index=0, step=1, total_steps=4),
    )
    await _feed(tracker, queued("j1", 0, 1, 0), queued("j1", 1, 1, 0), started("j1", 0, 1, 1))
    row = await _job(storage_pool, "j1")
    assert (row["status"], row["tier"], row["kind"], row["image_count"]) == (
        "running",
        "realtime",
        "portrait",
        2,
    )
    await _feed(
        tracker,
        progress,  # not tracked: ignored
        failed("j1", 0, 1, 2, final=False),
        queued("j1", 0, 2, 3),
        started("j1", 0, 2, 4),
        completed("j1", 0, 2, 6),
        started("j1", 1, 1, 5),
        completed("j1", 1, 1, 7),
        pack("j1", 9, JobStatus.COMPLETED, 2, 0),
    )
    row = await _job(storage_pool, "j1")
    assert row["status"] == "completed"
    assert (row["attempts"], row["retries"]) == (3, 1)
    assert (row["completed_count"], row["failed_count"]) == (2, 0)
    assert row["cost_usd"] == Decimal("0.06")
    assert row["estimated_cost_usd"] == Decimal("0.08")
    assert (row["last_error"], row["last_error_type"]) == ("boom 1", "ProviderError")
    assert row["queued_at"] == T0 and row["started_at"] == T0 + timedelta(seconds=1)
    assert row["finished_at"] == T0 + timedelta(seconds=9)
    assert (row["queue_wait_ms"], row["run_ms"], row["total_ms"]) == (1000, 8000, 9000)
    images = await storage_pool.fetch(
        "SELECT image_index, status, attempts, duration_ms, cost_usd FROM generation_job_images"
        " WHERE job_id = 'j1' ORDER BY image_index"
    )
    assert [tuple(r) for r in images] == [
        (0, "completed", 2, 1200, Decimal("0.03")),
        (1, "completed", 1, 1200, Decimal("0.03")),
    ]


async def test_redelivery_and_late_events_never_move_a_job_back(storage_pool: asyncpg.Pool) -> None:
    tracker = JobTracker(storage_pool)
    events = [
        queued("j2", 0, 1, 0),
        queued("j2", 1, 1, 0),
        started("j2", 0, 1, 1),
        completed("j2", 0, 1, 2),
        failed("j2", 1, 1, 3, final=True),
        pack("j2", 4, JobStatus.PARTIALLY_COMPLETED, 1, 1),
    ]
    # Terminal first, then everything else late and out of order, then all of it again.
    order = [events[5], events[3], events[1], events[4], events[2], events[0]]
    await _feed(tracker, *order)
    first = dict(await _job(storage_pool, "j2"))
    await _feed(tracker, *order, *events)
    again = dict(await _job(storage_pool, "j2"))
    first.pop("updated_at"), again.pop("updated_at")
    assert first == again
    assert again["status"] == "partially_completed"
    assert (again["completed_count"], again["failed_count"], again["attempts"]) == (1, 1, 2)
    assert again["cost_usd"] == Decimal("0.03")  # counted once despite redelivery
    assert again["last_error"] == "boom 1"
    statuses = await storage_pool.fetch(
        "SELECT status FROM generation_job_images WHERE job_id = 'j2' ORDER BY image_index"
    )
    assert [r["status"] for r in statuses] == ["completed", "failed"]
    assert await storage_pool.fetchval("SELECT count(*) FROM applied_events") == len(events)


async def test_a_completed_image_can_be_drawn_again(storage_pool: asyncpg.Pool) -> None:
    """Postprocess rejects a finished image (or asks for a variation): a higher attempt."""
    tracker = JobTracker(storage_pool)
    rejected = GenerationFailed(
        **_env("generation_failed", "j4", 0, 1, "postprocess", seconds=3),
        data=GenerationFailedData(
            image_id="img0",
            image_index=0,
            attempt=1,
            error_type="QualityCheckError",
            error="image is 32x32, below 64 px",
            retryable=True,
            final=False,
        ),
    )
    await _feed(
        tracker,
        queued("j4", 0, 1, 0, count=1),
        started("j4", 0, 1, 1),
        completed("j4", 0, 1, 2),
        rejected,
        queued("j4", 0, 2, 4, count=1),
    )
    image = await storage_pool.fetchrow("SELECT * FROM generation_job_images WHERE job_id = 'j4'")
    assert (image["status"], image["attempts"], image["finished_at"]) == ("queued", 2, None)
    await _feed(tracker, started("j4", 0, 2, 5), completed("j4", 0, 2, 7))
    image = await storage_pool.fetchrow("SELECT * FROM generation_job_images WHERE job_id = 'j4'")
    assert (image["status"], image["cost_usd"]) == ("completed", Decimal("0.06"))
    assert image["finished_at"] == T0 + timedelta(seconds=7)
    row = await _job(storage_pool, "j4")
    assert (row["status"], row["retries"], row["last_error_type"]) == (
        "running",
        1,
        "QualityCheckError",
    )


async def test_cancelled_job_keeps_its_status(storage_pool: asyncpg.Pool) -> None:
    tracker = JobTracker(storage_pool)
    cancelled = JobCancelled(
        **_env("job_cancelled", "j3", seconds=3), data=JobCancelledData(released_usd=0.04)
    )
    await _feed(
        tracker,
        queued("j3", 0, 1, 0, count=1),
        cancelled,
        started("j3", 0, 1, 1),  # late: the job stays cancelled
        pack("j3", 4, JobStatus.CANCELLED, 0, 0),
    )
    row = await _job(storage_pool, "j3")
    assert (row["status"], row["reason_code"]) == ("cancelled", "cancelled")
    assert row["finished_at"] == T0 + timedelta(seconds=3)
    assert row["started_at"] == T0 + timedelta(seconds=1)  # timings still recorded
