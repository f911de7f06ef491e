"""Cancellation on the generator side (DECISIONS.md #4).

- The control consumer (group `generator-control`) reads the control topic, where the
  scheduler puts a copy of each `job_cancelled` (in the same outbox transaction as the one
  on the events topic), and records the job id in the generator's own schema. Generators
  do not read the events topic: that would deliver every event of every image to them
  for the rare cancel. Every pod's control consumer owns only some partitions of the
  control topic, so the shared table - not memory - is what tells every pod about every
  cancel.
- Before an image starts, the worker asks the store; a cancelled job never starts.
- While an image runs, `CancelWatch` keeps its `CancelToken` fresh: at once when this pod's
  own control consumer sees the cancel, otherwise by polling the store every
  `cancel_poll_s` for the one running job. Backends check the token between diffusion
  steps and stop at the next one.
- Why a read per image and not an in-memory copy kept by LISTEN/NOTIFY: PostgreSQL
  signals every listening connection of the database on every NOTIFY, whatever its
  channel, and each one reads the notification queue in a transaction of its own. The
  stack shares one database and the gateway notifies on each projection commit (~6 per
  image), so a listening generator cost ~6 server transactions per image to save this one
  read (measured with statement logging against pg_stat_database, issue 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import asyncpg

from imagegen.db import transient_as_retryable
from imagegen.kafka.ports import Record
from imagegen.retention import REPLAY_WINDOW, AgePruner
from services.generator.backends import CancelToken

log = logging.getLogger(__name__)

_MARKER = b'"job_cancelled"'


class CancellationStore(Protocol):
    """Which jobs have been cancelled; shared by every generator pod."""

    async def cancel(self, job_id: str) -> None:
        """Record that `job_id` was cancelled (idempotent)."""
        ...

    async def is_cancelled(self, job_id: str) -> bool:
        """Whether `job_id` was cancelled."""
        ...


class PgCancellationStore:
    """The `cancelled_jobs` table of the `generator` schema; `pruner()` forgets a cancel
    once none of its job's messages can arrive any more."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def cancel(self, job_id: str) -> None:
        async with transient_as_retryable():
            await self._pool.execute(
                "INSERT INTO cancelled_jobs (job_id) VALUES ($1) ON CONFLICT DO NOTHING", job_id
            )

    async def is_cancelled(self, job_id: str) -> bool:
        async with transient_as_retryable():
            found = await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM cancelled_jobs WHERE job_id = $1)", job_id
            )
        return bool(found)

    def pruner(self) -> AgePruner:
        return AgePruner(self._pool, "cancelled_jobs", "cancelled_at", keep=REPLAY_WINDOW)


class InMemoryCancellationStore:
    """One process's view: for unit tests and single-process runs without a database."""

    def __init__(self) -> None:
        self.cancelled: set[str] = set()

    async def cancel(self, job_id: str) -> None:
        self.cancelled.add(job_id)

    async def is_cancelled(self, job_id: str) -> bool:
        return job_id in self.cancelled


class CancelWatch:
    """Keeps the running image's cancel token in step with the store."""

    def __init__(self, store: CancellationStore, poll_s: float = 0.5) -> None:
        self.store = store
        self._poll_s = poll_s
        self._running: dict[str, CancelToken] = {}

    def notify(self, job_id: str) -> None:
        """This pod saw the cancel itself: stop the job now if it runs here."""
        token = self._running.get(job_id)
        if token is not None:
            token.set()

    async def _poll(self, job_id: str, token: CancelToken) -> None:
        while not token.is_set():
            await asyncio.sleep(self._poll_s)
            try:
                if await self.store.is_cancelled(job_id):
                    log.info("event=cancel_seen job_id=%s via=store", job_id)
                    token.set()
            except Exception as exc:  # a database blip must not kill the running image
                log.warning("event=cancel_poll_error job_id=%s error=%r", job_id, str(exc))

    @contextlib.asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[CancelToken]:
        """A token for one running image, set when its job is cancelled."""
        token = CancelToken()
        self._running[job_id] = token
        poller = asyncio.create_task(self._poll(job_id, token))
        try:
            yield token
        finally:
            self._running.pop(job_id, None)
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller


class CancelListener:
    """Handler of the control consumer: records `job_cancelled` events, ignores the rest."""

    def __init__(self, watch: CancelWatch) -> None:
        self._watch = watch

    async def on_event(self, record: Record) -> None:
        # Only cancels are of interest (the topic may carry other control records later):
        # skip anything else without parsing JSON.
        if _MARKER not in record.value:
            return
        job_id = _cancelled_job_id(record.value)
        if job_id is None:
            return
        await self._watch.store.cancel(job_id)
        log.info("event=job_cancel_recorded job_id=%s", job_id)
        self._watch.notify(job_id)


def _cancelled_job_id(value: bytes) -> str | None:
    """The job id of a `job_cancelled` event; None for anything else.

    Read loosely on purpose: a record type this generator does not know yet is not poison
    to it.
    """
    try:
        event = json.loads(value)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("type") != "job_cancelled":
        return None
    job_id = event.get("job_id")
    return job_id if isinstance(job_id, str) and job_id else None
