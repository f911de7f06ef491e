"""The read model: jobs, images and the event log, projected from the `events` topic.

Each event is applied in one transaction: appended to the log (deduplicated on its id,
a duplicate changes nothing), given the next per-job `seq`, then folded into its job
and image rows. Streams are woken only after the commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from imagegen.db import transient_as_retryable
from imagegen.kafka import Record, decode
from schemas.events import EVENT_ADAPTER, Event, GenerationQueued, ImageStored, JobStatus
from schemas.requests import JobKind
from services.gateway.folding import fold_image, fold_job
from services.gateway.notify import EventSignal, announce
from services.gateway.webhooks import store as webhook_store
from services.gateway.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)

# Appends are serialised (across replicas too) so that event ids become visible in id
# order: a stream that has read up to id N can never later miss an id below N.
_EVENT_LOG_LOCK = 0x6761_7465_7761_79  # "gateway"


@dataclass
class _Job:
    user_id: str
    status: JobStatus
    seq: int


class Projection:
    def __init__(
        self, pool: asyncpg.Pool, signal: EventSignal, webhooks: WebhookDispatcher | None = None
    ) -> None:
        self._pool = pool
        self._signal = signal
        self._webhooks = webhooks

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
                    await fold_job(conn, event.job_id, job.user_id, job.status, event)
            await fold_image(conn, owner, event)
            # The delivery commits with the projection (or neither does); sent later.
            hooked = await webhook_store.enqueue(conn, event) if seq is not None else None
            payload = event.model_copy(update={"seq": seq, "user_id": owner})
            await conn.execute(
                "UPDATE events SET seq = $2, user_id = $3, payload = $4::jsonb WHERE id = $1",
                row_id,
                seq,
                owner,
                payload.model_dump_json(),
            )
            if owner is not None:
                await announce(conn, owner)  # sent at commit: wakes streams on every replica
        if hooked is not None and self._webhooks is not None:
            self._webhooks.wake()
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
        kind = JobKind.PACK.value
        if isinstance(event, (ImageStored, GenerationQueued)):
            kind = event.data.kind
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
