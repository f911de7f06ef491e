"""Webhook rows in the gateway's schema: a job's webhook, its deliveries and attempts.

`enqueue` runs inside the projection's transaction, so a delivery exists exactly when
the event it announces is projected (a redelivered event is deduplicated before it gets
here, and `event_id` is unique besides).
"""

from __future__ import annotations

import json
import uuid

import asyncpg

from schemas.events import Event
from services.gateway.webhooks.models import (
    EVENT_TYPES,
    WebhookAttempt,
    WebhookDelivery,
    WebhookIn,
    WebhookStatus,
)

MIGRATION = """
-- Webhooks: one per job at most; deliveries are claimed by the dispatcher of any replica.
CREATE TABLE webhooks (
    job_id     text PRIMARY KEY,
    user_id    text NOT NULL,
    url        text NOT NULL,
    events     jsonb NOT NULL,
    secret     text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE webhook_deliveries (
    id              text PRIMARY KEY,
    job_id          text NOT NULL,
    event_id        text NOT NULL UNIQUE,
    event_type      text NOT NULL,
    url             text NOT NULL,
    body            text NOT NULL,
    state           text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, created_at);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE TABLE webhook_attempts (
    delivery_id  text NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    attempted_at timestamptz NOT NULL,
    status_code  integer,
    error        text,
    duration_ms  integer,
    PRIMARY KEY (delivery_id, attempt)
);
"""


async def register(conn: asyncpg.Connection, job_id: str, user_id: str, hook: WebhookIn) -> None:
    """Remember the job's webhook (in the transaction that records the job)."""
    await conn.execute(
        "INSERT INTO webhooks (job_id, user_id, url, events, secret)"
        " VALUES ($1, $2, $3, $4::jsonb, $5)",
        job_id,
        user_id,
        hook.url,
        json.dumps(hook.events),
        hook.secret,
    )


def body_of(event: Event) -> str:
    """What receivers get: the event as the job's event stream spells it."""
    return json.dumps(
        {
            "type": event.type,
            "event_id": event.id,
            "job_id": event.job_id,
            "timestamp": event.time.isoformat(),
            "data": event.data.model_dump(mode="json"),
        },
        separators=(",", ":"),
    )


async def enqueue(conn: asyncpg.Connection, event: Event) -> str | None:
    """A pending delivery of `event` when its job's webhook asked for it; its id or None."""
    if event.job_id is None:
        return None
    wanted = [name for name, types in EVENT_TYPES.items() if event.type in types]
    if not wanted:
        return None
    delivery_id: str | None = await conn.fetchval(
        "INSERT INTO webhook_deliveries (id, job_id, event_id, event_type, url, body,"
        " next_attempt_at)"
        " SELECT $1, w.job_id, $3, $4, w.url, $5, clock_timestamp() FROM webhooks w"
        " WHERE w.job_id = $2 AND w.events ?| $6::text[]"
        " ON CONFLICT (event_id) DO NOTHING RETURNING id",
        f"whd_{uuid.uuid4().hex}",
        event.job_id,
        event.id,
        event.type,
        body_of(event),
        wanted,
    )
    return delivery_id


async def job_webhook(pool: asyncpg.Pool, job_id: str) -> WebhookStatus | None:
    """The job's webhook with every delivery and attempt, oldest first; no secret."""
    hook = await pool.fetchrow("SELECT url, events FROM webhooks WHERE job_id = $1", job_id)
    if hook is None:
        return None
    deliveries = await pool.fetch(
        "SELECT * FROM webhook_deliveries WHERE job_id = $1 ORDER BY created_at, id", job_id
    )
    attempts = await pool.fetch(
        "SELECT a.* FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
        " WHERE d.job_id = $1 ORDER BY a.delivery_id, a.attempt",
        job_id,
    )
    log: dict[str, list[WebhookAttempt]] = {}
    for a in attempts:
        log.setdefault(a["delivery_id"], []).append(
            WebhookAttempt(
                attempt=a["attempt"],
                at=a["attempted_at"],
                status_code=a["status_code"],
                error=a["error"],
                duration_ms=a["duration_ms"],
            )
        )
    return WebhookStatus(
        url=hook["url"],
        events=json.loads(hook["events"]),
        deliveries=[
            WebhookDelivery(
                id=d["id"],
                event_type=d["event_type"],
                event_id=d["event_id"],
                state=d["state"],
                attempts=d["attempts"],
                next_attempt_at=d["next_attempt_at"],
                delivered_at=d["delivered_at"],
                created_at=d["created_at"],
                log=log.get(d["id"], []),
            )
            for d in deliveries
        ],
    )
