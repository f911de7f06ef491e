"""Queries over the projection: a user's jobs, their images (with signed URLs) and events."""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from imagegen.blobstore import BlobStore
from schemas.characters import Audience
from schemas.events import JobStatus
from schemas.requests import JobKind
from services.gateway import gallery, paging, queueing
from services.gateway.models import Image, Job
from services.gateway.models_images import JobDetail, JobOut

TERMINAL_EVENT_TYPES = frozenset({"pack_completed", "job_cancelled"})
_DISPLAY_ORDER = ("display", "original", "print")
_THUMBNAIL_ORDER = ("thumbnail", *_DISPLAY_ORDER)


@dataclass(frozen=True)
class LoggedEvent:
    id: int
    type: str
    payload: str


async def insert_job(
    conn: asyncpg.Connection,
    job_id: str,
    user_id: str,
    *,
    kind: JobKind,
    total: int,
    character_id: str | None = None,
    story_id: str | None = None,
    page_number: int | None = None,
    image_id: str | None = None,
    style: str | None = None,
    audience: Audience = "general",
) -> None:
    """The job as its request describes it. A row already there is this same job (its id
    comes from an Idempotency-Key claim whose earlier attempt sent the command and died
    before committing, and the projection made the row from its events): the request's
    fields are filled in, its progress kept. Another user's row with the id is refused."""
    ours = await conn.fetchval(
        "INSERT INTO jobs (id, user_id, kind, status, character_id, total, story_id,"
        " page_number, image_id, style, audience)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind,"
        "  character_id = EXCLUDED.character_id, total = EXCLUDED.total,"
        "  story_id = EXCLUDED.story_id, page_number = EXCLUDED.page_number,"
        "  image_id = EXCLUDED.image_id, style = EXCLUDED.style, audience = EXCLUDED.audience"
        " WHERE jobs.user_id = EXCLUDED.user_id"
        " RETURNING true",
        job_id,
        user_id,
        kind.value,
        JobStatus.QUEUED.value,
        character_id,
        total,
        story_id,
        page_number,
        image_id,
        style,
        audience,
    )
    if not ours:
        raise asyncpg.UniqueViolationError(f"job {job_id} exists and is not {user_id}'s")


async def job_status(pool: asyncpg.Pool, user_id: str, job_id: str) -> JobStatus | None:
    """The job's status, or None when the user has no such job."""
    status = await pool.fetchval(
        "SELECT status FROM jobs WHERE id = $1 AND user_id = $2", job_id, user_id
    )
    return JobStatus(status) if status is not None else None


def _progress(status: JobStatus, done: int, total: int) -> float:
    if status.terminal:
        return 1.0
    return min(done / total, 1.0) if total > 0 else 0.0


async def _signed(
    blobs: BlobStore, renditions: dict[str, dict[str, object]], order: tuple[str, ...], ttl: int
) -> str | None:
    for name in order:
        if name in renditions:
            return await blobs.presign_get(str(renditions[name]["key"]), ttl)
    return None


async def get_job(
    pool: asyncpg.Pool, blobs: BlobStore, user_id: str, job_id: str, url_ttl: int
) -> Job | None:
    job = await pool.fetchrow("SELECT * FROM jobs WHERE id = $1 AND user_id = $2", job_id, user_id)
    if job is None:
        return None
    rows = await pool.fetch(
        "SELECT * FROM images WHERE job_id = $1 AND status = 'completed'"
        " ORDER BY index, id, version",
        job_id,
    )
    images = []
    for row in rows:
        renditions = json.loads(row["renditions"])
        images.append(
            Image(
                id=row["id"],
                index=row["index"],
                url=await _signed(blobs, renditions, _DISPLAY_ORDER, url_ttl),
                thumbnail_url=await _signed(blobs, renditions, _THUMBNAIL_ORDER, url_ttl),
                width=row["width"],
                height=row["height"],
                size_bytes=row["size_bytes"],
                seed=row["seed"],
                model=row["model"],
                demo=row["demo"],
                created_at=row["created_at"],
            )
        )
    status = JobStatus(job["status"])
    return Job(
        job_id=job["id"],
        kind=job["kind"],
        status=status,
        character_id=job["character_id"],
        progress=_progress(status, job["completed"] + job["failed"], job["total"]),
        completed=job["completed"],
        failed=job["failed"],
        total=job["total"],
        created_at=job["created_at"],
        finished_at=job["finished_at"],
        audience=job["audience"],
        images=images,
    )


_JOB_COLUMNS = (
    "id, kind, status, total, completed, failed, running, phase, reason_code, reason,"
    " cost_usd, character_id, story_id, page_number, image_id, created_at, updated_at,"
    " finished_at, audience"
)


def _job_out(row: asyncpg.Record) -> JobOut:
    status = JobStatus(row["status"])
    return JobOut(
        job_id=row["id"],
        kind=row["kind"],
        status=status,
        progress=_progress(status, row["completed"] + row["failed"], row["total"]),
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        running=row["running"],
        phase=row["phase"],
        reason_code=row["reason_code"],
        reason=row["reason"],
        cost_usd=row["cost_usd"],
        character_id=row["character_id"],
        story_id=row["story_id"],
        page_number=row["page_number"],
        image_id=row["image_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        audience=row["audience"],
    )


async def job_detail(
    pool: asyncpg.Pool, links: gallery.Links, user_id: str, job_id: str
) -> JobDetail | None:
    """Any kind of job of the user's, with the images it made (or is making)."""
    row = await pool.fetchrow(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1 AND user_id = $2", job_id, user_id
    )
    if row is None:
        return None
    images = await gallery.images_of_job(pool, links, job_id)
    job = _job_out(row)
    queue = None if job.status.terminal else await queueing.queue_status(pool, job_id)
    unscored = sum(1 for image in images if image.not_scored_reason is not None)
    detail = JobDetail(**job.model_dump(), images=images, not_scored=unscored)
    return detail.model_copy(update={"queue": queue})


async def list_jobs(
    pool: asyncpg.Pool,
    user_id: str,
    status: JobStatus | None,
    kind: JobKind | None,
    limit: int,
    after: paging.Cursor | None,
) -> tuple[list[JobOut], str | None]:
    """One page of the user's jobs, newest first."""
    rows = await pool.fetch(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE user_id = $1"
        " AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR kind = $3)"
        " AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))"
        " ORDER BY created_at DESC, id DESC LIMIT $6",
        user_id,
        status.value if status else None,
        kind.value if kind else None,
        after[0] if after else None,
        after[1] if after else "",
        limit + 1,
    )
    more = len(rows) > limit
    cursor = paging.encode(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if more else None
    jobs = [_job_out(row) for row in rows[:limit]]
    for i, job in enumerate(jobs):
        if not job.status.terminal:
            jobs[i] = job.model_copy(
                update={"queue": await queueing.queue_status(pool, job.job_id)}
            )
    return jobs, cursor


async def latest_event_id(pool: asyncpg.Pool, user_id: str) -> int:
    """The id of the user's newest logged event (0 for none): where a live stream starts."""
    found = await pool.fetchval("SELECT max(id) FROM events WHERE user_id = $1", user_id)
    return int(found or 0)


async def events_after(
    pool: asyncpg.Pool, user_id: str, job_id: str | None, after: int, limit: int = 200
) -> list[LoggedEvent]:
    """The user's logged events (one job's, or all) with ids above `after`, in id order."""
    if job_id is None:
        rows = await pool.fetch(
            "SELECT id, type, payload FROM events WHERE user_id = $1 AND id > $2"
            " ORDER BY id LIMIT $3",
            user_id,
            after,
            limit,
        )
    else:
        rows = await pool.fetch(
            "SELECT id, type, payload FROM events WHERE job_id = $1 AND user_id = $2"
            " AND id > $3 ORDER BY id LIMIT $4",
            job_id,
            user_id,
            after,
            limit,
        )
    return [LoggedEvent(id=r["id"], type=r["type"], payload=r["payload"]) for r in rows]
