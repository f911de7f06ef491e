"""A job's life in the scheduler's tables: admitted (budget reserved, slot or queue), progress,
and its one terminal `pack_completed` (plus `job_cancelled` for a cancellation).

Statuses: `accepted` (row written, not yet admitted) -> `queued` (waiting for a slot of the
user's in-flight cap) -> `running` -> completed | partially_completed | failed | cancelled.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from imagegen.db import sql_literal
from imagegen.metrics import instruments
from imagegen.object_layout import image_prefix
from schemas.events import (
    JobCancelled,
    JobCancelledData,
    JobProgress,
    JobProgressData,
    JobStatus,
    PackCompleted,
    PackCompletedData,
    job_event,
)
from schemas.jobs import GenerateImage
from schemas.requests import DiscardImage, JobKind, UserTier
from schemas.topics import TopicNames
from services.scheduler.day_totals import Slot
from services.scheduler.dispatch import JOB_COLUMNS, LOCK_USER, Dispatcher
from services.scheduler.ledger import Ledger
from services.scheduler.outbox import (
    SOURCE,
    new_job_trace,
    remember_trace,
    stage,
    stage_event,
)
from services.scheduler.planning import JobPlan
from services.scheduler.reservations import Hold
from services.scheduler.settlements import STORED_COPY
from services.scheduler.user_locks import note_user_locked

log = logging.getLogger(__name__)

CANCELLING = "cancelling"
"""A cancelled job whose dispatched images are still finishing; it ends `cancelled`."""
CANCELLED_REASON = "cancelled_by_user"


class JobBook:
    def __init__(self, topics: TopicNames, ledger: Ledger, dispatcher: Dispatcher) -> None:
        self._topics = topics
        self._ledger = ledger
        self._dispatcher = dispatcher

    async def insert(
        self, conn: asyncpg.Connection, job: NewJob, *, sent: str | None = None
    ) -> bool:
        """Write the job row, with the trace it was created in; False when it exists already
        (a redelivered request). `sent`: the status of `job.statement()` when the caller sent
        it already (with BEGIN)."""
        if sent is not None:
            inserted = sent == _INSERTED_ONE
        else:
            inserted = bool(
                await conn.fetchval(
                    _INSERT_JOB.format(*(f"${n}" for n in range(1, 8))) + " RETURNING true",
                    job.job_id,
                    job.user_id,
                    job.tier.value,
                    job.kind.value,
                    job.request_json,
                    job.story_id,
                    job.traceparent,
                )
            )
        if inserted:
            remember_trace(job.job_id, job.traceparent)
        return inserted

    async def admit(self, conn: asyncpg.Connection, plan: JobPlan) -> None:
        """Reserve the plan's whole estimate (or end the job), store its images, take a slot."""
        day = self._ledger.today()
        # What the job is, with its status (queued when admitted, else as it ends).
        planned = (
            "UPDATE jobs SET image_count = $2, topic_tier = $3, budget_day = $4{status}"
            " WHERE job_id = $1"
        )
        facts = (plan.job_id, len(plan.images), plan.topic_tier.value, day)
        holds = [
            Hold(
                Slot(plan.job_id, i.index, 0),
                i.job.seed,
                i.chain[0].provider,
                i.chain[0].model,
                i.estimate,
            )
            for i in plan.images
        ]
        refusal = await self._ledger.reserve(conn, day, plan.user_id, plan.user_tier, holds)
        if refusal is not None:
            await conn.execute(planned.format(status=""), *facts)
            await self.end(conn, plan.job_id, JobStatus.FAILED, refusal.reason_code, refusal.reason)
            return
        # In one statement: every image (arrays by column; `depends_on` as array literals,
        # since arrays of arrays must be rectangular), the job queued, and the user's row
        # locked for the slot decision that follows (a statement of its own: it counts the
        # running jobs after this lock).
        messages = [i.job.model_dump_json() for i in plan.images]
        await conn.execute(
            "WITH q AS (" + planned.format(status=", status = 'queued'") + "),"
            " u AS (" + LOCK_USER.replace("$1", "$13") + ")"
            " INSERT INTO job_images (job_id, image_index, image_id, status, message, version,"
            " offers, depends_on, phase, story_id)"
            " SELECT $1, i, id, 'waiting', m::jsonb, v, o::jsonb, d::integer[], p, s"
            " FROM unnest($5::integer[], $6::text[], $7::text[], $8::integer[], $9::text[],"
            " $10::text[], $11::text[], $12::text[]) AS r(i, id, m, v, o, d, p, s)",
            *facts,
            [i.index for i in plan.images],
            [i.job.image.image_id for i in plan.images],
            messages,
            [i.job.image.version for i in plan.images],
            [json.dumps([o.to_json() for o in i.chain]) for i in plan.images],
            ["{" + ",".join(str(int(d)) for d in i.depends_on) + "}" for i in plan.images],
            [i.phase for i in plan.images],
            [i.job.image.story_id for i in plan.images],
            plan.user_id,
        )
        note_user_locked(plan.user_id)
        instruments().jobs.add(1, {"status": "queued", "tier": plan.user_tier.value})
        # The images as just written, in index order as `pump` reads them: activating this
        # job reads none of them back.
        written = sorted(zip(plan.images, messages, strict=True), key=lambda im: im[0].index)
        images = [
            {
                "image_index": i.index,
                "status": "waiting",
                "depends_on": list(i.depends_on),
                "stored_keys": None,
                "story_id": i.job.image.story_id,
                "message": message,
            }
            for i, message in written
        ]
        await self._dispatcher.activate_waiting(
            conn, plan.user_id, plan.user_tier.value, {plan.job_id: images}
        )
        log.info(
            "event=job_admitted job_id=%s user_id=%s images=%d estimate_usd=%s",
            plan.job_id,
            plan.user_id,
            len(plan.images),
            plan.estimate,
        )

    async def store(
        self, conn: asyncpg.Connection, job_id: str, index: int, seed: int, keys: str
    ) -> asyncpg.Record | None:
        """With the job's row locked already (`lock_statement`), in one statement: image
        `index` and the generation its stored copy of `seed` settles (`STORED_COPY`) locked,
        the image stored under `keys` if it is dispatched and the job running or
        cancelling, and the job's counts after that. The row holds the job's columns (as
        `Dispatcher.lock_job`), the image's `image_status`, `message` and `phase`, the
        `generation` (its row type, or None), `stored_now`, and the counts (`_counts`); None
        when there is no such job.

        One snapshot serves: taken after the job's lock, it sees every status change of the
        job's images (all are made under that lock), so the counts are exact."""
        row: asyncpg.Record | None = await conn.fetchrow(_STORE, job_id, index, seed, keys)
        return row

    async def image_settled(
        self,
        conn: asyncpg.Connection,
        job: asyncpg.Record,
        phase: str,
        counts: asyncpg.Record | None = None,
    ) -> None:
        """After an image is stored or failed: progress, dependents, maybe the job's end
        (`counts`: the job's counts when the caller has them already)."""
        if counts is None:
            counts = await self._counts(conn, job["job_id"])
        if job["status"] == CANCELLING:
            if counts["in_flight"] == 0:
                await self.end(
                    conn, job["job_id"], JobStatus.CANCELLED, CANCELLED_REASON, counts["reason"]
                )
            return
        if job["image_count"] > 1:
            await stage_event(
                conn,
                self._topics.events,
                job_event(
                    JobProgress,
                    job["job_id"],
                    job["user_id"],
                    counts["stored"],
                    counts["failed"],
                    source=SOURCE,
                    data=JobProgressData(
                        total=job["image_count"],
                        completed=counts["stored"],
                        failed=counts["failed"],
                        running=counts["in_flight"],
                        phase=phase,
                    ),
                ),
            )
        if counts["pending"] == 0:
            final = (
                JobStatus.COMPLETED
                if counts["failed"] == 0
                else JobStatus.FAILED
                if counts["stored"] == 0
                else JobStatus.PARTIALLY_COMPLETED
            )
            # A reason noted while it ran (an image refused for content policy) ends it.
            await self.end(conn, job["job_id"], final, counts["reason_code"], counts["reason"])
            return
        if counts["waiting"]:  # nothing waits: no image can go now (no read of them all)
            await self._dispatcher.pump(conn, job)
        if job["story_id"]:
            await self._dispatcher.pump_story(conn, job["story_id"], job["job_id"])

    async def cancel(self, conn: asyncpg.Connection, job: asyncpg.Record, reason: str) -> None:
        """Stop what has not started and release the reservations; the images already
        dispatched finish (stored, or stopped by the generator) and are counted, then the
        job ends cancelled: its pack_completed is its last word (README, "Cancelling")."""
        await conn.execute(
            "UPDATE job_images SET status = 'cancelled', due_at = NULL, updated_at = now()"
            " WHERE job_id = $1 AND status IN ('waiting', 'retry_wait')",
            job["job_id"],
        )
        released = await self._ledger.release(conn, job["job_id"])
        cancelled = job_event(
            JobCancelled,
            job["job_id"],
            job["user_id"],
            source=SOURCE,
            data=JobCancelledData(reason=reason, released_usd=float(released)),
        )
        await stage_event(conn, self._topics.events, cancelled)
        # The same event on the small control topic: the generators read that one only, so
        # they stop the job's running images without reading every event.
        await stage_event(conn, self._topics.control, cancelled)
        in_flight = (await self._counts(conn, job["job_id"]))["in_flight"]
        if in_flight == 0:
            await self.end(conn, job["job_id"], JobStatus.CANCELLED, CANCELLED_REASON, reason)
        else:
            # Draining: the slot is freed now (nothing new starts), the end waits for the
            # outcomes of the images in flight (`image_settled`).
            await conn.execute(
                "UPDATE jobs SET status = $2, reason_code = $3, reason = $4 WHERE job_id = $1",
                job["job_id"],
                CANCELLING,
                CANCELLED_REASON,
                reason,
            )
            if job["status"] == "running":
                await self._dispatcher.activate_waiting(conn, job["user_id"], job["tier"])
        if job["story_id"]:
            await self._dispatcher.pump_story(conn, job["story_id"], job["job_id"])
        log.info(
            "event=job_cancelled job_id=%s released_usd=%s in_flight=%d",
            job["job_id"],
            released,
            in_flight,
        )

    async def drop_in_flight(
        self, conn: asyncpg.Connection, job: asyncpg.Record, index: int, phase: str
    ) -> None:
        """A cancelling job's dispatched image that will not be stored (stopped, failed,
        flagged for a variation, overdue): it counts as cancelled, not retried."""
        message = await conn.fetchval(
            "UPDATE job_images SET status = 'cancelled', due_at = NULL, updated_at = now()"
            " WHERE job_id = $1 AND image_index = $2 AND status = 'dispatched'"
            " RETURNING message",
            job["job_id"],
            index,
        )
        if message is not None:
            await self.discard(conn, GenerateImage.model_validate_json(message), "cancelled")
        await self.image_settled(conn, job, phase)

    async def discard(self, conn: asyncpg.Connection, msg: GenerateImage, reason: str) -> None:
        """Tell storage that this image ended unstored: an attempt of it still on its way
        (one given up as overdue) must not be stored after the job's last word."""
        img = msg.image
        await stage(
            conn,
            self._topics.requests,
            img.user_id,
            DiscardImage(
                image_id=img.image_id,
                version=img.version,
                job_id=img.job_id,
                user_id=img.user_id,
                reason=reason,
                prefix=image_prefix(img),
            ),
        )

    async def end(
        self,
        conn: asyncpg.Connection,
        job_id: str,
        status: JobStatus,
        reason_code: str | None = None,
        reason: str | None = None,
    ) -> None:
        """The job's one terminal event; frees its slot for the user's next queued job."""
        # The status it had comes back with the update (the row locked by the subquery), and
        # the counts its event reports (every caller holds the job's lock already, so they
        # are read as of now).
        # A job that held a slot frees it: the user's row is locked in this statement too,
        # for `activate_waiting` below (which counts after the lock, in a statement of its own).
        job = await conn.fetchrow(
            "WITH counts AS (" + _counts_query("status", _ENDING) + "),"
            " u AS (INSERT INTO users (user_id) SELECT user_id FROM jobs"
            " WHERE job_id = $1 AND status = 'running'"
            " ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id RETURNING user_id)"
            " UPDATE jobs j SET status = $2, reason_code = $3, reason = $4,"
            " finished_at = coalesce(j.finished_at, now())"
            " FROM (SELECT job_id, status FROM jobs WHERE job_id = $1 FOR UPDATE) AS was,"
            " counts WHERE j.job_id = was.job_id"
            " RETURNING was.status AS was, j.user_id, j.tier, j.topic_tier, j.image_count,"
            " j.created_at, counts.stored, counts.failed, counts.cost, counts.character_id,"
            " EXISTS (SELECT 1 FROM u) AS user_locked",
            job_id,
            status.value,
            reason_code,
            reason,
        )
        was = job["was"]
        if job["user_locked"]:
            note_user_locked(job["user_id"])
        instruments().jobs.add(1, {"status": status.value, "tier": job["tier"]})
        counts = job
        cost = counts["cost"]
        duration = datetime.now(UTC) - job["created_at"]
        character_id = counts["character_id"]
        await stage_event(
            conn,
            self._topics.events,
            job_event(
                PackCompleted,
                job_id,
                job["user_id"],
                source=SOURCE,
                data=PackCompletedData(
                    status=status,
                    image_count=job["image_count"],
                    completed_count=counts["stored"],
                    failed_count=counts["failed"],
                    total_duration_ms=int(duration.total_seconds() * 1000),
                    reason_code=reason_code,
                    reason=reason,
                    cost_usd=float(Decimal(cost)),
                    character_id=character_id,
                    tier=job["topic_tier"],
                ),
            ),
        )
        log.info(
            "event=job_ended job_id=%s status=%s reason_code=%s stored=%d failed=%d cost_usd=%s",
            job_id,
            status.value,
            reason_code,
            counts["stored"],
            counts["failed"],
            cost,
        )
        if was == "running":
            await self._dispatcher.activate_waiting(conn, job["user_id"], job["tier"])

    async def _counts(self, conn: asyncpg.Connection, job_id: str) -> asyncpg.Record:
        """The job's images by state, with the reason noted on the job."""
        row: asyncpg.Record = await conn.fetchrow(_counts_query("status"), job_id)
        return row


_INSERT_JOB = (
    "INSERT INTO jobs (job_id, user_id, tier, kind, request, story_id, traceparent,"
    " image_count, status) VALUES ({}, {}, {}, {}, {}, {}, {}, 0, 'accepted')"
    " ON CONFLICT (job_id) DO NOTHING"
)
_INSERTED_ONE = "INSERT 0 1"


@dataclass(frozen=True)
class NewJob:
    """A job row to write (`JobBook.insert`), with the trace it is created in."""

    job_id: str
    user_id: str
    tier: UserTier
    kind: JobKind
    request_json: str
    story_id: str | None = None
    traceparent: str | None = field(default_factory=new_job_trace)

    def statement(self) -> str:
        """The insert as a simple query (literals: it may travel with BEGIN, and its status
        says whether it wrote the row); empty when a value cannot be a literal."""
        values = (
            self.job_id,
            self.user_id,
            self.tier.value,
            self.kind.value,
            self.request_json,
            self.story_id,
            self.traceparent,
        )
        try:
            return _INSERT_JOB.format(*(sql_literal(v) for v in values))
        except ValueError:
            return ""  # the parameterised insert reports it


def lock_statement(job_id: str) -> str:
    """Lock the job's row, as a simple query (literals: it may travel with BEGIN)."""
    return f"SELECT 1 FROM jobs WHERE job_id = {sql_literal(job_id)} FOR UPDATE"


# What a job's terminal event reports beside its counts: its actual cost and its first
# image's character.
_ENDING = (
    ", (SELECT coalesce(sum(actual_usd), 0) FROM generations g"
    "   WHERE g.job_id = $1) AS cost,"
    " (SELECT message->'image'->>'character_id' FROM job_images f"
    "   WHERE f.job_id = $1 ORDER BY image_index LIMIT 1) AS character_id"
)


def _counts_query(status: str, extra: str = "") -> str:
    """`JobBook._counts`'s query over job `$1`'s images, with `status` the expression that
    says each image's status."""
    return (
        f"SELECT count(*) FILTER (WHERE {status} = 'stored') AS stored,"
        f" count(*) FILTER (WHERE {status} = 'failed') AS failed,"
        f" count(*) FILTER (WHERE {status} IN ('dispatched', 'retry_wait')) AS in_flight,"
        f" count(*) FILTER (WHERE {status} IN ('waiting', 'dispatched', 'retry_wait'))"
        "   AS pending,"
        f" count(*) FILTER (WHERE {status} = 'waiting') AS waiting,"
        " (SELECT reason_code FROM jobs j WHERE j.job_id = $1) AS reason_code,"
        " (SELECT reason FROM jobs j WHERE j.job_id = $1) AS reason"
        + extra
        + " FROM job_images WHERE job_id = $1"
    )


# `JobBook.store`: the image locked first, then (in the select list) the generation; the
# update re-checks the image's latest version; the counts see the stored image as stored.
_STORE = (
    "WITH i AS MATERIALIZED (SELECT status, message, phase FROM job_images"
    " WHERE job_id = $1 AND image_index = $2 FOR UPDATE),"
    f" j AS MATERIALIZED (SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1),"
    " s AS (UPDATE job_images u SET status = 'stored', stored_keys = $4, updated_at = now()"
    " FROM i, j WHERE u.job_id = $1 AND u.image_index = $2 AND u.status = 'dispatched'"
    " AND j.status IN ('running', 'cancelling') RETURNING u.image_index)"
    " SELECT j.*, i.status AS image_status, i.message, i.phase,"
    " (" + STORED_COPY.format(job="$1", index="$2", seed="$3") + ") AS generation,"
    " EXISTS (SELECT 1 FROM s) AS stored_now, c.* FROM j LEFT JOIN i ON true, ("
    + _counts_query(
        "CASE WHEN image_index = $2 AND EXISTS (SELECT 1 FROM s) THEN 'stored' ELSE status END"
    )
    + ") AS c"
)
