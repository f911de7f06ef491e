"""Transactional outbox: messages are written with the state change that causes them.

A handler stages its jobs and events in the same PostgreSQL transaction as its state
change, so a crash either keeps both or neither; the relay then publishes staged rows in
order and deletes them in one transaction. One relay at a time publishes (an advisory
lock), so per-job order holds across scheduler instances. The window for a duplicate is a
crash between the broker's acknowledgement and the delete commit; consumers drop those by
their deterministic ids.

In the handlers' transactions (`transaction`) a staged row costs no round trip of its own:
it waits for the next statement that writes outbox rows (dispatch's, which writes the
waiting ones first, so ids keep the order of staging) or else goes with COMMIT, as literals
in one simple query. Elsewhere (the ticker) `stage` inserts at once.

A relay pass costs three round trips: BEGIN; the lock and the batch in one statement; the
delete and COMMIT in one simple query. The relay runs when a commit here staged something
(`wake`); its timer is a safety net (rows left by a crashed instance), and a pass that
finds another relay holding the lock retries shortly, since that relay may have begun
before this instance's rows were committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextvars import ContextVar

import asyncpg
from pydantic import BaseModel

from imagegen.db import begun, sql_literal
from imagegen.errors import RetryableError
from imagegen.kafka import Publisher, encode
from imagegen.telemetry import ENQUEUED_AT_HEADER, current_traceparent, same_trace
from schemas.events import EventBase
from schemas.jobs import GenerateImage
from services.scheduler.user_locks import tracking_user_locks

log = logging.getLogger(__name__)
SOURCE = "imagegen/scheduler"
_RELAY_LOCK = "scheduler.outbox.relay"
_STAGED: ContextVar[int] = ContextVar("scheduler_outbox_staged", default=0)
_CONTENDED_RETRY_S = 0.05
_HEX = "\\x"  # bytea's hex input format
# The try-lock and the read share one statement, so one snapshot, taken just before the
# lock: a relay that commits its delete in that instant leaves a duplicate of its batch
# (consumers drop it by id, as after a crash), never a loss or a reordering of new rows.
_CLAIM = (
    "WITH lock AS MATERIALIZED (SELECT pg_try_advisory_xact_lock(hashtext($1)) AS held)"
    " SELECT lock.held, o.id, o.topic, o.key, o.value, o.headers FROM lock"
    " LEFT JOIN LATERAL (SELECT id, topic, key, value, headers FROM outbox"
    " WHERE lock.held ORDER BY id LIMIT $2) AS o ON true ORDER BY o.id"
)
# Job traces never change once the job row has one (`remember_trace` writes it in the
# transaction that creates the job): read once per job, not once per staged message.
_TRACES: OrderedDict[str, str | None] = OrderedDict()
_TRACES_MAX = 10_000


_PENDING: ContextVar[list[Staged] | None] = ContextVar("scheduler_outbox_pending", default=None)


def staged() -> int:
    """How many messages this task has staged so far: a handler that staged none after its
    commit has nothing to wake the relay for (each relay pass is a transaction)."""
    return _STAGED.get()


Staged = tuple[str, str | None, bytes, str]
"""An outbox row: topic, key, encoded value, headers (JSON)."""

# Rows in order (ids follow it), after any statement of the caller's given as `$5`'s CTE.
STAGE_ROWS = (
    "INSERT INTO outbox (topic, key, value, headers)"
    " SELECT topic, key, value, headers::jsonb"
    " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])"
    " WITH ORDINALITY AS r(topic, key, value, headers, n) ORDER BY n"
)


async def stage(
    conn: asyncpg.Connection,
    topic: str,
    key: str | None,
    value: BaseModel,
    *,
    traceparent: str | None = None,
) -> None:
    """Queue `value` for `topic`; it is published only if the caller's transaction commits.

    The row keeps the trace the message belongs to (its job's, see `job_trace`) and the
    time it was queued, so consumers continue that trace and measure the wait from here.
    """
    await _write(conn, await staged_row(conn, topic, key, value, traceparent=traceparent))


async def staged_row(
    conn: asyncpg.Connection,
    topic: str,
    key: str | None,
    value: BaseModel,
    *,
    traceparent: str | None = None,
) -> Staged:
    """The outbox row `stage` writes, for a caller that writes several in one statement
    (`columns` and `STAGE_ROWS`); counted as staged."""
    if traceparent is None:
        traceparent = await job_trace(conn, _job_of(value))
    headers = {ENQUEUED_AT_HEADER: f"{_enqueued_at(value):.6f}"}
    if traceparent:
        headers["traceparent"] = traceparent
    _STAGED.set(_STAGED.get() + 1)
    return (topic, key, encode(value), json.dumps(headers))


async def event_row(conn: asyncpg.Connection, topic: str, event: EventBase) -> Staged:
    """`stage_event`'s row (see `staged_row`)."""
    traceparent = await job_trace(conn, event.job_id)
    stamped = event.model_copy(
        update={"source": event.source or SOURCE, "traceparent": traceparent}
    )
    return await staged_row(
        conn, topic, event.job_id or event.user_id, stamped, traceparent=traceparent
    )


def columns(rows: list[Staged]) -> tuple[list[str], list[str | None], list[bytes], list[str]]:
    """Rows as the four arrays `STAGE_ROWS` takes."""
    return (
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    )


async def stage_event(conn: asyncpg.Connection, topic: str, event: EventBase) -> None:
    """Stage an event keyed by its job id (or user id), stamped with this service's source."""
    await _write(conn, await event_row(conn, topic, event))


async def _write(conn: asyncpg.Connection, row: Staged) -> None:
    """Insert `row` now, or, inside `transaction`, with the next statement that stages rows
    (`pending`) or else with its COMMIT."""
    pending = _PENDING.get()
    if pending is not None:
        pending.append(row)
        return
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4)", *row
    )


def pending() -> list[Staged]:
    """The rows staged in this `transaction` and not written yet, taken: a statement that
    writes outbox rows writes these first, so ids keep the order of staging."""
    rows = _PENDING.get()
    if not rows:
        return []
    taken = list(rows)
    rows.clear()
    return taken


@contextlib.asynccontextmanager
async def transaction(conn: asyncpg.Connection, first: str = "") -> AsyncIterator[str]:
    """A transaction (`first`: its first statement, literals only, sent with BEGIN; yields
    its status) whose staged rows are written in order by the next statement that writes
    outbox rows, the last of them with COMMIT in one round trip: staging costs no round trip
    of its own. It remembers the users whose row it locked (`transactions.user_locked`)."""
    rows: list[Staged] = []
    token = _PENDING.set(rows)
    try:
        with tracking_user_locks():
            async with begun(conn, first) as status:
                yield status
                await conn.execute(_closing(rows))
    finally:
        _PENDING.reset(token)


def _closing(rows: list[Staged]) -> str:
    """The rows (as literals) and COMMIT, as one simple query."""
    if not rows:
        return "COMMIT"
    values = ", ".join(
        f"({sql_literal(topic)}, {sql_literal(key)}, {sql_literal(_HEX + value.hex())}::bytea,"
        f" {sql_literal(headers)}::jsonb)"
        for topic, key, value, headers in rows
    )
    return f"INSERT INTO outbox (topic, key, value, headers) VALUES {values}; COMMIT"


def new_job_trace() -> str | None:
    """The trace a job created now keeps with its row: the current one (its request's)."""
    return current_traceparent() or None


def remember_trace(job_id: str, traceparent: str | None) -> None:
    """Cache the trace a job's row keeps (`new_job_trace`, written with the row)."""
    _TRACES[job_id] = traceparent
    _TRACES.move_to_end(job_id)
    while len(_TRACES) > _TRACES_MAX:
        _TRACES.popitem(last=False)


async def job_trace(conn: asyncpg.Connection, job_id: str | None) -> str | None:
    """The trace a message about `job_id` belongs to: the current one when it is that job's
    (or no job is named), else the one the job was created in. Work for a job that starts
    in another job's handler (activation when a slot frees) or in the retry ticker (no
    trace at all) so stays in its own request's trace."""
    current = current_traceparent()
    if job_id is None:
        return current
    if job_id in _TRACES:
        stored = _TRACES[job_id]
    else:
        stored = await conn.fetchval("SELECT traceparent FROM jobs WHERE job_id = $1", job_id)
        if stored is not None:  # a job not created yet (or without a trace) is read again
            remember_trace(job_id, stored)
    if stored is None or (current is not None and same_trace(current, stored)):
        return current
    return stored


def _job_of(value: BaseModel) -> str | None:
    if isinstance(value, GenerateImage):
        return value.image.job_id
    if isinstance(value, EventBase):
        return value.job_id
    return None


def _enqueued_at(value: BaseModel) -> float:
    if isinstance(value, GenerateImage):
        return value.enqueued_at.timestamp()
    return time.time()


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
            # Cleared before the pass: a commit that stages during it wakes the next one.
            self._wake.clear()
            wait = self._interval
            try:
                # A short batch emptied the table as it was when the pass began.
                while (published := await self.drain_once()) >= self._batch:
                    pass
                if published < 0:
                    wait = min(wait, _CONTENDED_RETRY_S)
            except RetryableError as exc:
                log.warning("event=outbox_relay_retry error=%r", str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        # A graceful stop leaves nothing staged behind that this instance could publish.
        with contextlib.suppress(RetryableError):
            while await self.drain_once() > 0:
                pass

    async def drain_once(self) -> int:
        """Publish one batch; the number of rows published (0 when idle, -1 when another
        relay holds the lock)."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute("BEGIN")
                try:
                    published = await self._publish_batch(conn)
                except BaseException:
                    if conn.is_in_transaction() and not conn.is_closed():
                        with contextlib.suppress(Exception):
                            await conn.execute("ROLLBACK")
                    raise
        except (
            OSError,
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            # A restarting server: "starting up", "terminating connection due to
            # administrator command", crash shutdown. Not retried, these ended the relay
            # for good while the scheduler kept running (fault test: database restart).
            asyncpg.exceptions.OperatorInterventionError,
        ) as exc:
            raise RetryableError(f"outbox: {exc}") from exc
        self.published += max(published, 0)
        return published

    async def _publish_batch(self, conn: asyncpg.Connection) -> int:
        """Inside BEGIN: claim, publish, then delete and COMMIT in one round trip."""
        claimed = await conn.fetch(_CLAIM, _RELAY_LOCK, self._batch)
        rows = [r for r in claimed if r["id"] is not None]
        if not rows:
            await conn.execute("COMMIT")
            return 0 if claimed and claimed[0]["held"] else -1
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
        # Ids are integers from the table itself: inlined, the delete and the COMMIT go as
        # one simple query.
        ids = ",".join(str(int(r["id"])) for r in rows)
        await conn.execute(f"DELETE FROM outbox WHERE id IN ({ids}); COMMIT")
        return len(rows)
