"""How each event changes the job and image rows (inside the projection's transaction).

Counts move only on transitions (an image becoming ready, a final failure recorded
once), so a re-emitted event with a new id still cannot count twice. Money arrives as
float in the contracts and is turned into Decimal before PostgreSQL sums it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from schemas.events import (
    ConsistencyFlagged,
    Event,
    GenerationFailed,
    GenerationQueued,
    GenerationQueuedData,
    GenerationStarted,
    ImageDeleted,
    ImageReviewed,
    ImageStored,
    ImageStoredData,
    JobCancelled,
    JobProgress,
    JobStatus,
    PackCompleted,
)
from schemas.requests import PROMPT_CHARACTER_PREFIX, JobKind
from services.gateway.gallery import PENDING_STATUSES
from services.gateway.models_images import ImageStatus

log = logging.getLogger(__name__)

_PROGRESS_RANK = {JobStatus.ACCEPTED: 0, JobStatus.QUEUED: 1, JobStatus.RUNNING: 2}
_IMPLIED_STATUS = {
    "generation_queued": JobStatus.QUEUED,
    "generation_started": JobStatus.RUNNING,
    "generation_progress": JobStatus.RUNNING,
    "generation_completed": JobStatus.RUNNING,
    "image_stored": JobStatus.RUNNING,
    "job_progress": JobStatus.RUNNING,
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
class _Delta:
    """What one event adds to or sets on its job row."""

    completed: int = 0
    failed: int = 0
    total: int = 0
    exact_total: bool = False
    character_id: str | None = None
    story_id: str | None = None
    running: int | None = None
    phase: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    cost: Decimal = Decimal(0)
    exact_cost: bool = False


def _money(value: float) -> Decimal:
    return Decimal(str(value))


@dataclass(frozen=True, slots=True)
class FoldedJob:
    """The job row after an event was folded into it."""

    user_id: str
    status: JobStatus
    seq: int
    """The event's per-job sequence number."""
    hooked: bool
    """Whether the job has a webhook (registered with the job, before any of its events)."""


_STATUSES = [status.value for status in JobStatus]
_STATUS_LIST = "ARRAY[" + ", ".join(f"'{status}'" for status in _STATUSES) + "]"

# The job's next seq and the event's changes in one statement. The new status per current
# status comes from `next_status` (as $2, one entry per JobStatus in declaration order);
# $15 lists the current statuses at which this event ends the job. SET sees the old row.
_FOLD_JOB = (
    "UPDATE jobs SET last_seq = last_seq + 1, updated_at = now(),"
    f" status = coalesce(($2::text[])[array_position({_STATUS_LIST}, status)], status),"
    " total = CASE WHEN $3 THEN $4 ELSE GREATEST(total, $4) END,"
    " completed = completed + $5, failed = failed + $6,"
    " character_id = COALESCE(character_id, $7), story_id = COALESCE(story_id, $8),"
    " running = CASE WHEN status = ANY($15::text[]) THEN 0 ELSE COALESCE($9, running) END,"
    " phase = COALESCE($10, phase),"
    " reason_code = COALESCE($11, reason_code), reason = COALESCE($12, reason),"
    " cost_usd = CASE WHEN $13 THEN $14 ELSE cost_usd + $14 END,"
    " finished_at = CASE WHEN status = ANY($15::text[]) THEN COALESCE(finished_at, now())"
    "  ELSE finished_at END"
    " WHERE id = $1 RETURNING user_id, status, last_seq,"
    " EXISTS (SELECT 1 FROM webhooks w WHERE w.job_id = jobs.id) AS hooked"
)


def _ends(status: JobStatus, event: Event) -> bool:
    """Whether the event, at this status, ends the job. A cancelled job's images in flight
    still finish (and count) before its closing pack_completed: only that event ends it
    (README, "Cancelling")."""
    new_status = next_status(status, event)
    return new_status.terminal and (
        new_status is not JobStatus.CANCELLED or isinstance(event, PackCompleted)
    )


async def fold_job(conn: asyncpg.Connection, job_id: str, event: Event) -> FoldedJob | None:
    """Apply a job's event to its rows and take the job's next seq; creates the job row
    when the gateway has none (and the event names its owner). None: no owner known."""
    owner = event.user_id
    if owner is None:
        owner = await conn.fetchval("SELECT user_id FROM jobs WHERE id = $1", job_id)
        if owner is None:
            log.warning("event=event_without_owner job_id=%s type=%s", job_id, event.type)
            return None
    delta = _Delta()
    image_first, image_args = "", list[Any]()
    if isinstance(event, GenerationQueued):
        queued = event.data
        delta.total, delta.character_id = queued.image_count, queued.character_id
        if queued.character_id.startswith(PROMPT_CHARACTER_PREFIX):
            delta.character_id = None  # a prompt-only job's stand-in, not a character
        delta.story_id = queued.story_id
        # Sent with the job's update below: one statement.
        image_first = f"WITH queued AS ({_image_insert(16)}) "
        image_args = await _image_row(conn, job_id, owner, queued, queued.tier)
    elif isinstance(event, GenerationStarted):
        # Sent with the job's update below: one statement.
        image_first = (
            "WITH started AS (UPDATE images SET status = $17"
            " WHERE id = $16 AND job_id = $1 AND status = $18) "
        )
        image_args = [
            event.data.image_id,
            ImageStatus.GENERATING.value,
            ImageStatus.QUEUED.value,
        ]
    elif isinstance(event, ImageStored):
        delta.completed = await _store_image(conn, job_id, owner, event)
        delta.cost = _money(event.data.cost_usd)
    elif isinstance(event, GenerationFailed) and event.data.final:
        delta.failed = await _fail_image(conn, job_id, event)
    elif isinstance(event, ConsistencyFlagged):
        flag = event.data
        await conn.execute(
            "UPDATE images SET consistency_score = $3, variations = GREATEST(variations, $4),"
            " flagged = flagged OR $5 WHERE id = $1 AND version = $2",
            flag.image_id,
            flag.version,
            flag.score,
            flag.variation + 1,
            flag.final,
        )
    elif isinstance(event, JobProgress):
        delta.total, delta.exact_total = event.data.total, True
        delta.running, delta.phase = event.data.running, event.data.phase or None
    elif isinstance(event, PackCompleted):
        done = event.data
        delta.total, delta.exact_total = done.image_count, done.image_count > 0
        delta.reason_code, delta.reason = done.reason_code, done.reason
        delta.cost, delta.exact_cost = _money(done.cost_usd), done.cost_usd > 0
    args = (
        job_id,
        [next_status(status, event).value for status in JobStatus],
        delta.exact_total,
        delta.total,
        delta.completed,
        delta.failed,
        delta.character_id,
        delta.story_id,
        delta.running,
        delta.phase,
        delta.reason_code,
        delta.reason,
        delta.exact_cost,
        delta.cost,
        [status.value for status in JobStatus if _ends(status, event)],
        *image_args,
    )
    row = await conn.fetchrow(image_first + _FOLD_JOB, *args)
    if row is None:
        # A job the gateway has no row for (its POST went elsewhere): created, then folded.
        kind = JobKind.PACK.value
        if isinstance(event, (ImageStored, GenerationQueued)):
            kind = event.data.kind
        await conn.execute(
            "INSERT INTO jobs (id, user_id, kind, status) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (id) DO NOTHING",
            job_id,
            owner,
            kind,
            JobStatus.ACCEPTED.value,
        )
        row = await conn.fetchrow(image_first + _FOLD_JOB, *args)
        assert row is not None
    job = FoldedJob(
        user_id=row["user_id"],
        status=JobStatus(row["status"]),
        seq=row["last_seq"],
        hooked=row["hooked"],
    )
    if job.status.terminal and (isinstance(event, (PackCompleted, JobCancelled))):
        # Whatever was still pending will not come now; at a cancellation, only what had
        # not started (running images report their outcome before pack_completed).
        cancelled = job.status is JobStatus.CANCELLED
        ended = ImageStatus.CANCELLED if cancelled else ImageStatus.FAILED
        pending = [ImageStatus.QUEUED.value] if isinstance(event, JobCancelled) else None
        await conn.execute(
            "UPDATE images SET status = $2 WHERE job_id = $1 AND status = ANY($3::text[])",
            job_id,
            ended.value,
            pending or list(PENDING_STATUSES),
        )
    return job


async def fold_image(conn: asyncpg.Connection, owner: str | None, event: Event) -> None:
    """Image events that need no job: deletions and reviews confirmed by storage."""
    if isinstance(event, ImageDeleted):
        # The listed versions are gone from storage; versions asked for after the delete
        # was requested were hidden (deleting) with it and go too.
        await conn.execute(
            "DELETE FROM images WHERE id = $1 AND ($3::text IS NULL OR user_id = $3)"
            " AND (version = ANY($2::int[]) OR status = $4)",
            event.data.image_id,
            event.data.versions,
            owner,
            ImageStatus.DELETING.value,
        )
    elif isinstance(event, ImageReviewed):
        await conn.execute(
            "UPDATE images SET pending_review = NULL, review_status = CASE WHEN version = $2"
            " THEN $3 ELSE review_status END WHERE id = $1 AND ($4::text IS NULL OR user_id = $4)",
            event.data.image_id,
            event.data.version,
            event.data.decision,
            owner,
        )


async def _kind(conn: asyncpg.Connection, image_id: str, kind: str) -> str:
    """A regeneration shows as what it regenerates (a portrait stays a portrait)."""
    if kind != JobKind.REGENERATE.value:
        return kind
    first = await conn.fetchval(
        "SELECT kind FROM images WHERE id = $1 ORDER BY version LIMIT 1", image_id
    )
    return str(first) if first is not None else JobKind.PORTRAIT.value


def _image_insert(first: int) -> str:
    """The image version's row, queued (a known one only gains its tier if it had none),
    with its parameters numbered from `first` (see `_image_row`). Its owner is the job's
    (the event's user where the gateway has no job row yet)."""
    n = [f"${first + i}" for i in range(12)]
    return (
        "INSERT INTO images (id, version, job_id, user_id, index, kind, status, character_id,"
        " story_id, page_number, parent_version, tier)"
        f" VALUES ({n[0]}, {n[1]}, {n[2]}, COALESCE((SELECT user_id FROM jobs WHERE id = {n[2]}),"
        f" {n[3]}), {', '.join(n[4:])})"
        " ON CONFLICT (id, version) DO UPDATE SET tier = EXCLUDED.tier"
        " WHERE images.tier IS NULL"
    )


async def _image_row(
    conn: asyncpg.Connection,
    job_id: str,
    user_id: str,
    data: GenerationQueuedData | ImageStoredData,
    tier: str | None,
) -> list[Any]:
    """The parameters of `_image_insert`."""
    return [
        data.image_id,
        data.version,
        job_id,
        user_id,
        data.image_index,
        await _kind(conn, data.image_id, data.kind),
        ImageStatus.QUEUED.value,
        data.character_id,
        data.story_id,
        data.page_number,
        data.version - 1 if data.version > 1 else None,
        tier,
    ]


_STORE_IMAGE = (
    "UPDATE images SET status = CASE WHEN status = $3 THEN status ELSE $4 END,"
    " renditions = $5::jsonb, width = $6, height = $7, size_bytes = $8, seed = $9,"
    " model = $10, provider = $11, demo = $12, consistency_score = $13, flagged = $14,"
    " style = CASE WHEN $15 = '' THEN style ELSE $15 END, prompt = $16,"
    " story_id = COALESCE(story_id, $17), page_number = COALESCE(page_number, $18),"
    " character_id = COALESCE(character_id, $19), cost_usd = $20, stored_at = now(),"
    " negative_prompt = $21, scene_description = $22, scene_source = $23,"
    " quality_score = $24, character_scores = $25::jsonb, not_scored_reason = $26"
    " FROM (SELECT id AS was_id, version AS was_version, status AS was FROM images"
    "   WHERE id = $1 AND version = $2 FOR UPDATE) AS old"
    " WHERE id = old.was_id AND version = old.was_version RETURNING old.was"
)


async def _store_image(
    conn: asyncpg.Connection, job_id: str, user_id: str, event: ImageStored
) -> int:
    """Make the version ready with its stored metadata; 1 when it was not ready before."""
    data = event.data
    renditions: dict[str, Any] = {r.name: r.model_dump(exclude={"name"}) for r in data.renditions}
    stored = (
        data.image_id,
        data.version,
        ImageStatus.DELETING.value,
        ImageStatus.COMPLETED.value,
        json.dumps(renditions),
        data.width,
        data.height,
        data.size_bytes,
        data.seed,
        data.model,
        data.provider,
        data.demo,
        data.consistency_score,
        data.flagged,
        data.style,
        data.prompt,
        data.story_id,
        data.page_number,
        data.character_id,
        _money(data.cost_usd),
        data.negative_prompt,
        data.scene_description,
        data.scene_source,
        data.quality_score,
        json.dumps({cid: s.model_dump() for cid, s in data.character_scores.items()}),
        data.not_scored_reason,
    )
    # The status it had comes back with the update (NULL: no row yet, none updated).
    before = await conn.fetchval(_STORE_IMAGE, *stored)
    if before is None:
        await conn.execute(_image_insert(1), *await _image_row(conn, job_id, user_id, data, None))
        await conn.fetchval(_STORE_IMAGE, *stored)
    return 0 if before == ImageStatus.COMPLETED.value else 1


async def _fail_image(conn: asyncpg.Connection, job_id: str, event: GenerationFailed) -> int:
    """Record the image's final failure once; 1 when it is new."""
    inserted = await conn.fetchval(
        "INSERT INTO image_failures (job_id, image_index) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        job_id,
        event.data.image_index,
    )
    await conn.execute(
        "UPDATE images SET status = $3 WHERE id = $1 AND job_id = $2 AND status = ANY($4::text[])",
        event.data.image_id,
        job_id,
        ImageStatus.FAILED.value,
        list(PENDING_STATUSES),
    )
    return 1 if inserted else 0
