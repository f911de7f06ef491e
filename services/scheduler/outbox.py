"""Transactional outbox: messages are written with the state change that causes them.

A handler stages its jobs and events in the same PostgreSQL transaction as its state
change, so a crash either keeps both or neither; the relay then publishes staged rows in
order and deletes them in one transaction. One relay at a time publishes (an advisory
lock), so per-job order holds across scheduler instances. The window for a duplicate is a
crash between the broker's acknowledgement and the delete commit; consumers drop those by
their deterministic ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import asyncpg
from pydantic import BaseModel

from imagegen.errors import RetryableError
from imagegen.kafka import Publisher, encode
from imagegen.telemetry import current_traceparent, inject_trace_headers
from schemas.events import EventBase

log = logging.getLogger(__name__)
SOURCE = "imagegen/scheduler"
_RELAY_LOCK = "scheduler.outbox.relay"


async def stage(conn: asyncpg.Connection, topic: str, key: str | None, value: BaseModel) -> None:
    """Queue `value` for `topic`; it is published only if the caller's transaction commits."""
    headers = inject_trace_headers({})
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4)",
        topic,
        key,
        encode(value),
        json.dumps(headers),
    )


async def stage_event(conn: asyncpg.Connection, topic: str, event: EventBase) -> None:
    """Stage an event keyed by its job id (or user id), stamped with this service's source."""
    stamped = event.model_copy(
        update={"source": event.source or SOURCE, "traceparent": current_traceparent()}
    )
    await stage(conn, topic, event.job_id or event.user_id, stamped)


class OutboxRelay:
    """Publishes staged rows; `wake()` after a commit makes it run at once."""

    def __init__(
        self, pool: asyncpg.Pool, publisher: Publisher, *, interval_s: float, batch: int = 500
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._interval = interval_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                while await self.drain_once():
                    pass
            except RetryableError as exc:
                log.warning("event=outbox_relay_retry error=%r", str(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
        # A graceful stop leaves nothing staged behind that this instance could publish.
        with contextlib.suppress(RetryableError):
            while await self.drain_once():
                pass

    async def drain_once(self) -> int:
        """Publish one batch; the number of rows published (0 when idle or another relays)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock(hashtext($1))", _RELAY_LOCK
                ):
                    return 0
                rows = await conn.fetch(
                    "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1",
                    self._batch,
                )
                if not rows:
                    return 0
                # produce() runs in call order before each first await, so gathering keeps
                # per-partition order while acknowledgements overlap.
                await asyncio.gather(
                    *(
                        self._publisher.publish(
                            r["topic"], r["key"], bytes(r["value"]), json.loads(r["headers"])
                        )
                        for r in rows
                    )
                )
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1)", [r["id"] for r in rows])
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise RetryableError(f"outbox: {exc}") from exc
        self.published += len(rows)
        return len(rows)
