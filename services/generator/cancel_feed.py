"""Every pod's view of `cancelled_jobs`, kept in memory by LISTEN/NOTIFY: no read per image.

Why it gives the same answers as reading the table before each image:

- Writes: the control consumer that sees a cancel records it (`cancel`) with a
  `pg_notify` in the same statement, so the notification exists exactly when the row is
  committed (PostgreSQL delivers it after the commit, to every listening connection).
- A pod starts listening first, then loads the table: a cancel committed before the load is
  in it; one committed after the LISTEN is notified (both, at worst: a set ignores that).
  Only then is the view live.
- While the view is not live (starting, or the LISTEN connection lost: notifications sent
  meanwhile are gone), `is_cancelled` reads the table as before. A reconnect reloads it.
- Freshness: a notification reaches a pod a moment after the commit, where a read would
  see the row at once. That moment is far inside the race both already have: the cancel
  reaches the table only when some pod's control consumer has fetched it from the control
  topic. A cancel that lands after an image started is caught by `CancelWatch` during the
  run either way (it asks `is_cancelled` every `cancel_poll_s`, now from memory), and an
  image that finishes before is reported cancelled, never stored, exactly as today; the
  scheduler counts it cancelled.
- Forgetting: entries older than `REPLAY_WINDOW` are dropped, as the table's pruner drops
  its rows (no message of such a job can arrive any more).
"""

from __future__ import annotations

import time

import asyncpg

from imagegen.db import transient_as_retryable
from imagegen.pg_listen import Listening, PgListener
from imagegen.retention import REPLAY_WINDOW
from services.generator.cancellation import PgCancellationStore
from services.generator.migrations import SCHEMA

CHANNEL = "generator_cancelled_jobs"


class ListenedCancellationStore(Listening, PgCancellationStore):
    """`PgCancellationStore` answered from memory while its LISTEN is live. Use as an
    async context manager (the lifespan opens and closes the LISTEN connection)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        *,
        reconnect_s: float = 1.0,
        check_s: float = 30.0,
    ) -> None:
        super().__init__(pool)
        self._seen: dict[str, float] = {}  # job id -> when (time.time()) it was cancelled
        self.listener = PgListener(
            dsn,
            CHANNEL,
            lambda job_id: self._remember(job_id, time.time()),
            application_name="imagegen-generator-listen",
            search_path=SCHEMA,
            on_live=self._load,
            reconnect_s=reconnect_s,
            check_s=check_s,
        )
        self.table_reads = 0

    @property
    def live(self) -> bool:
        return self.listener.live

    async def cancel(self, job_id: str) -> None:
        async with transient_as_retryable():
            await self._pool.execute(
                "WITH added AS (INSERT INTO cancelled_jobs (job_id) VALUES ($1)"
                " ON CONFLICT DO NOTHING RETURNING job_id)"
                " SELECT pg_notify($2, job_id) FROM added",
                job_id,
                CHANNEL,
            )
        self._remember(job_id, time.time())

    async def is_cancelled(self, job_id: str) -> bool:
        if self.live:
            return job_id in self._seen
        self.table_reads += 1
        return await super().is_cancelled(job_id)

    def _remember(self, job_id: str, at: float) -> None:
        if not job_id:
            return
        self._seen[job_id] = at
        horizon = time.time() - REPLAY_WINDOW.total_seconds()
        if next(iter(self._seen.values())) < horizon:
            self._seen = {j: t for j, t in self._seen.items() if t >= horizon}

    async def _load(self, conn: asyncpg.Connection) -> None:
        """The whole table, once the LISTEN is in place (what was missed while down)."""
        rows = await conn.fetch(
            "SELECT job_id, extract(epoch FROM cancelled_at)::float8 AS at FROM cancelled_jobs"
        )
        for row in rows:
            self._seen.setdefault(row["job_id"], row["at"])
