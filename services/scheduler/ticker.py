"""The ticker: dispatches due retries, fails overdue attempts, sweeps up unused slots.

Due times live in `job_images.due_at`; every scheduler instance runs one ticker and they
share the rows with `FOR UPDATE SKIP LOCKED`, so nothing waits on a busy job.

It sleeps until the next retry is due (one read says when), not a fixed period: at rest it
wakes only for the overdue and slot sweep (every `interval_s * sweep_every`), whose one
read (`survey`) opens no transaction unless it finds work. A handler that may have
scheduled a retry (an attempt failed or was flagged) calls `wake()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from imagegen.errors import RetryableError
from schemas.jobs import GenerateImage
from services.scheduler.dispatch import Dispatcher

log = logging.getLogger(__name__)

_DUE_IN = (
    "SELECT extract(epoch FROM min(i.due_at) - now())::float8"
    " FROM job_images i JOIN jobs j USING (job_id)"
    " WHERE i.status = 'retry_wait' AND j.status = 'running'"
)
# `_DUE_IN` and the sweep's three reads as one row (lists as JSON arrays).
_SURVEY = (
    f"SELECT ({_DUE_IN}) AS due_in,"
    " (SELECT coalesce(jsonb_agg(jsonb_build_array(job_id, image_index) ORDER BY due_at),"
    " '[]')::text FROM (SELECT i.job_id, i.image_index, i.due_at"
    " FROM job_images i JOIN jobs j USING (job_id)"
    " WHERE i.status = 'dispatched' AND i.due_at <= now()"
    " AND j.status IN ('running', 'cancelling') ORDER BY i.due_at LIMIT $1) o) AS overdue,"
    " (SELECT coalesce(jsonb_agg(jsonb_build_array(user_id, tier)), '[]')::text"
    " FROM (SELECT DISTINCT user_id, tier FROM jobs WHERE status = 'queued' LIMIT 100) q)"
    " AS queued,"
    " (SELECT coalesce(jsonb_agg(job_id), '[]')::text FROM (SELECT DISTINCT i.job_id"
    " FROM job_images i JOIN jobs j USING (job_id)"
    " WHERE i.status = 'waiting' AND j.status = 'running' LIMIT 100) w) AS waiting"
)


@dataclass(frozen=True)
class Survey:
    """What the ticker found in one read (`Ticker.survey`)."""

    due_in: float | None
    overdue: list[tuple[str, int]]
    queued: list[tuple[str, str]]
    waiting: list[str]


class Ticker:
    """Dispatches due retries; every instance runs one, sharing rows with SKIP LOCKED."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dispatcher: Dispatcher,
        *,
        interval_s: float,
        on_staged: Callable[[], None],
        overdue: Callable[[asyncpg.Connection, str, int], Awaitable[bool]] | None = None,
        batch: int = 100,
        sweep_every: int = 10,
    ) -> None:
        self._overdue = overdue
        self._sweep_every = sweep_every
        self._pool = pool
        self._dispatcher = dispatcher
        self._interval = interval_s
        self._on_staged = on_staged
        self._batch = batch
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Look again now: a retry may have been scheduled."""
        self._wake.set()

    async def run(self) -> None:
        period = self._interval * self._sweep_every
        next_sweep = time.monotonic() + period
        while not self._stopping.is_set():
            self._wake.clear()
            due_in: float | None = self._interval
            try:
                survey = None
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + period
                    survey = await self.survey()
                due_in = survey.due_in if survey is not None else await self.due_in()
                if due_in is not None and due_in <= 0:
                    while await self.tick() >= self._batch:
                        pass
                    due_in = self._interval  # others may fall due soon after
                if survey is not None:
                    if await self.expire(survey.overdue):
                        due_in = min(due_in or self._interval, self._interval)
                    await self.sweep(survey.queued, survey.waiting)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RetryableError) as exc:
                log.warning("event=ticker_retry error=%r", str(exc))
            wait = next_sweep - time.monotonic()
            if due_in is not None:
                wait = min(wait, due_in)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))

    async def due_in(self) -> float | None:
        """Seconds until the next retry of a running job falls due (<= 0: due now); None
        when none waits. One statement, no transaction."""
        value = await self._pool.fetchval(_DUE_IN)
        return None if value is None else float(value)

    async def survey(self) -> Survey:
        """What a sweep period looks at, in one statement (no transaction): `due_in`, the
        overdue attempts, the users with queued jobs and the running jobs with waiting
        images. What is then done about them re-checks under its locks."""
        row = await self._pool.fetchrow(_SURVEY, self._batch)
        return Survey(
            due_in=None if row["due_in"] is None else float(row["due_in"]),
            overdue=[(str(j), int(i)) for j, i in json.loads(row["overdue"])],
            queued=[(str(u), str(t)) for u, t in json.loads(row["queued"])],
            waiting=[str(j) for j in json.loads(row["waiting"])],
        )

    async def tick(self) -> int:
        """Dispatch the retries that are due now; how many went."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT i.message FROM job_images i JOIN jobs j USING (job_id)"
                " WHERE i.status = 'retry_wait' AND i.due_at <= now() AND j.status = 'running'"
                " ORDER BY i.due_at LIMIT $1 FOR UPDATE OF i, j SKIP LOCKED",
                self._batch,
            )
            for row in rows:
                await self._dispatcher.dispatch(
                    conn, GenerateImage.model_validate_json(row["message"])
                )
        if rows:
            self._on_staged()
        return len(rows)

    async def expire(self, due: Sequence[tuple[str, int]] | None = None) -> int:
        """Fail the attempts that passed their deadline (`OverdueAttempts.fail`); how many
        (`due`: the overdue attempts as `survey` found them; else read)."""
        if self._overdue is None:
            return 0
        if due is None:
            due = (await self.survey()).overdue
        if not due:
            return 0
        async with self._pool.acquire() as conn:
            expired = 0
            for job_id, index in due:
                async with conn.transaction():
                    expired += await self._overdue(conn, job_id, index)
        if expired:
            self._on_staged()
        return expired

    async def sweep(
        self,
        users: Sequence[tuple[str, str]] | None = None,
        running: Sequence[str] | None = None,
    ) -> None:
        """Safety net: slots and story places that a skipped lock left unused are used now
        (`users` with queued jobs and `running` jobs with waiting images as `survey` found
        them; else read). Its read opens no transaction; one is opened only for work it
        found (what it then does re-checks under its locks)."""
        if users is None or running is None:
            survey = await self.survey()
            users, running = survey.queued, survey.waiting
        if not users and not running:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            for user_id, tier in users:
                await self._dispatcher.activate_waiting(conn, user_id, tier)
            for job_id in running:
                job = await self._dispatcher.lock_job(conn, job_id, skip_locked=True)
                if job is not None:
                    await self._dispatcher.pump(conn, job)
        self._on_staged()
