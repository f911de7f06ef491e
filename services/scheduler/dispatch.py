"""Deciding which images go to `jobs.<tier>` now, and staging them.

An image of a job is dispatched when
- its job holds a slot of the user's in-flight cap (status `running`; others wait `queued`,
  oldest first, never rejected);
- every image it depends on is settled (stored or failed: a scene whose portrait failed is
  still drawn, from the keys that exist); it gets the stored keys of those it waited for as
  `reference_keys` (the display rendition when there is one);
- for story work, fewer than `story_max_in_flight` images of that story are in flight
  (dispatched or waiting for a retry), counted across jobs under a per-story lock.

Every function runs inside the caller's transaction, which holds the job's row lock; the
staged messages leave through the outbox only when that transaction commits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from schemas.base import utcnow
from schemas.events import GenerationQueued, GenerationQueuedData, image_event
from schemas.jobs import CharacterRegion, GenerateImage
from schemas.requests import UserTier
from schemas.topics import TopicNames
from services.scheduler.outbox import (
    SOURCE,
    STAGE_ROWS,
    columns,
    event_row,
    pending,
    staged_row,
)
from services.scheduler.settings import SchedulerSettings
from services.scheduler.user_locks import note_user_locked, user_locked

log = logging.getLogger(__name__)

SETTLED = ("stored", "failed", "cancelled")
IN_FLIGHT = ("dispatched", "retry_wait")
_PREFERRED_RENDITIONS = ("display", "original", "print", "thumbnail")
# What a handler knows of a job it holds (`lock_job`).
JOB_COLUMNS = "job_id, user_id, tier, kind, image_count, status, story_id, created_at"
# The user's row, created and locked in one statement (a conflicting upsert locks the row it
# meets): slot decisions for the user are made under it, each counting after taking it.
LOCK_USER = (
    "INSERT INTO users (user_id) VALUES ($1)"
    " ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id"
)


def best_key(stored_keys: Any) -> str | None:
    """The key a dependent image should be conditioned on: the display rendition first."""
    keys = json.loads(stored_keys) if isinstance(stored_keys, str) else stored_keys
    if not keys:
        return None
    for name in _PREFERRED_RENDITIONS:
        if name in keys:
            return str(keys[name])
    return str(next(iter(keys.values())))


def with_dependency_keys(
    job: GenerateImage, stored: Sequence[tuple[Mapping[str, Any], str]]
) -> list[CharacterRegion]:
    """The job's regions, each given the stored images it waited for of its own character
    (a scene's portraits): one character's portrait never conditions another's region."""
    by_character: dict[str, list[str]] = {}
    for dependency, key in stored:
        character_id = json.loads(dependency["message"])["image"]["character_id"]
        by_character.setdefault(character_id, []).append(key)
    return [
        region.model_copy(
            update={
                "reference_keys": list(
                    dict.fromkeys(
                        [*region.reference_keys, *by_character.get(region.character_id, [])]
                    )
                )
            }
        )
        for region in job.layout
    ]


class Dispatcher:
    def __init__(self, settings: SchedulerSettings, topics: TopicNames) -> None:
        self._settings = settings
        self._topics = topics

    async def lock_job(
        self, conn: asyncpg.Connection, job_id: str, *, skip_locked: bool = False
    ) -> asyncpg.Record | None:
        skip = " SKIP LOCKED" if skip_locked else ""
        row: asyncpg.Record | None = await conn.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1 FOR UPDATE{skip}",
            job_id,
        )
        return row

    async def pump(
        self,
        conn: asyncpg.Connection,
        job: Mapping[str, Any],
        rows: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Dispatch every image of a running job that may go now; how many went (`rows`: the
        job's images when the caller has them as they are, as a job admitted in this
        transaction does; else read)."""
        if job["status"] != "running":
            return 0
        if rows is None:
            rows = await conn.fetch(
                "SELECT image_index, status, depends_on, stored_keys, story_id, message"
                " FROM job_images WHERE job_id = $1 ORDER BY image_index",
                job["job_id"],
            )
        waiting = [r for r in rows if r["status"] == "waiting"]
        if not waiting:
            return 0
        by_index = {r["image_index"]: r for r in rows}
        room = await self._story_room(conn, job["story_id"])
        sent = 0
        for row in waiting:
            deps = [by_index[d] for d in row["depends_on"] if d in by_index]
            if any(d["status"] not in SETTLED for d in deps):
                continue
            if room is not None and room <= 0:
                break
            stored = [
                (d, k)
                for d in deps
                if d["status"] == "stored" and (k := best_key(d["stored_keys"]))
            ]
            job_msg = GenerateImage.model_validate_json(row["message"])
            keys = list(dict.fromkeys([*job_msg.reference_keys, *(k for _, k in stored)]))
            update: dict[str, Any] = {"reference_keys": keys}
            if job_msg.layout:
                update["layout"] = with_dependency_keys(job_msg, stored)
            await self.dispatch(conn, job_msg.model_copy(update=update))
            sent += 1
            if room is not None:
                room -= 1
        return sent

    async def _story_room(self, conn: asyncpg.Connection, story_id: str | None) -> int | None:
        """How many more images of this story may start (None: not story work)."""
        if story_id is None:
            return None
        # Held to the end of the transaction: two jobs of one story never both take the last place.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"story:{story_id}")
        in_flight = await conn.fetchval(
            "SELECT count(*) FROM job_images WHERE story_id = $1 AND status = ANY($2)",
            story_id,
            list(IN_FLIGHT),
        )
        return int(self._settings.story_max_in_flight - in_flight)

    async def dispatch(self, conn: asyncpg.Connection, job: GenerateImage) -> None:
        """Stage one attempt of one image on its tier's topic, with its queued event."""
        # The image carries its attempt's tier from here on, so every event about it says it.
        image = job.image.model_copy(update={"tier": job.tier})
        job = job.model_copy(update={"enqueued_at": utcnow(), "image": image})
        img = job.image
        queued = image_event(
            GenerationQueued,
            img,
            img.attempt,
            img.variation,
            job.provider,
            source=SOURCE,
            data=GenerationQueuedData(
                image_id=img.image_id,
                image_index=img.image_index,
                image_count=img.image_count,
                character_id=img.character_id,
                tier=job.tier.value,
                attempt=img.attempt,
                kind=img.kind.value,
                version=img.version,
                provider=job.provider,
                model=job.model,
                estimated_cost_usd=job.estimated_cost_usd,
                story_id=img.story_id,
                page_number=img.page_number,
            ),
        )
        rows = [
            await staged_row(conn, self._topics.jobs(job.tier), img.job_id, job),
            await event_row(conn, self._topics.events, queued),
        ]
        # The image's row and its two outbox rows (the job, then its queued event), after any
        # rows staged before them and not written yet, in one statement.
        rows = [*pending(), *rows]
        await conn.execute(
            "WITH dispatched AS (UPDATE job_images SET status = 'dispatched', message = $7,"
            " attempt = $8, variation = $9, due_at = NULL, awaiting = NULL, updated_at = now()"
            " WHERE job_id = $5 AND image_index = $6) " + STAGE_ROWS,
            *columns(rows),
            img.job_id,
            img.image_index,
            job.model_dump_json(),
            img.attempt,
            img.variation,
        )
        log.info(
            "event=image_dispatched job_id=%s index=%d attempt=%d variation=%d provider=%s",
            img.job_id,
            img.image_index,
            img.attempt,
            img.variation,
            job.provider,
        )

    async def activate_waiting(
        self,
        conn: asyncpg.Connection,
        user_id: str,
        tier: str,
        admitted: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """Give free slots of the user's in-flight cap to their oldest queued jobs
        (`admitted`: the images of jobs admitted in this transaction, by job id, which need
        no read when they are activated)."""
        if not user_locked(user_id):  # else an earlier statement of this transaction did
            await conn.execute(LOCK_USER, user_id)
            note_user_locked(user_id)
        # The free slots (the cap less the running jobs, counted after the user's lock, so
        # every slot decision before is seen) go to the oldest queued jobs, taken, locked
        # and set running in one statement. SKIP LOCKED: a queued job another transaction
        # holds is activated by it or the sweep.
        activated = await conn.fetch(
            "UPDATE jobs j SET status = 'running', activated_at = now()"
            " FROM (SELECT job_id FROM jobs WHERE user_id = $1 AND tier = $2"
            " AND status = 'queued' ORDER BY created_at, job_id"
            " LIMIT greatest(0, $3 - (SELECT count(*) FROM jobs WHERE user_id = $1"
            " AND tier = $2 AND status = 'running'))"
            " FOR UPDATE SKIP LOCKED) AS q WHERE j.job_id = q.job_id"
            " RETURNING " + ", ".join(f"j.{c}" for c in JOB_COLUMNS.split(", ")),
            user_id,
            tier,
            self._settings.max_jobs_in_flight(UserTier(tier)),
        )
        # Dispatched oldest first.
        for job in sorted(activated, key=lambda r: (r["created_at"], r["job_id"])):
            await self.pump(conn, job, (admitted or {}).get(job["job_id"]))
            log.info("event=job_activated job_id=%s user_id=%s", job["job_id"], user_id)

    async def pump_story(self, conn: asyncpg.Connection, story_id: str, but: str) -> None:
        """A place of the story freed: let its other running jobs use it."""
        rows = await conn.fetch(
            "SELECT DISTINCT job_id FROM job_images WHERE story_id = $1 AND status = 'waiting'"
            " AND job_id <> $2",
            story_id,
            but,
        )
        for row in rows:
            job = await self.lock_job(conn, row["job_id"], skip_locked=True)
            if job is not None:
                await self.pump(conn, job)
