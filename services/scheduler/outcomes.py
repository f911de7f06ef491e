"""Outcomes: the events about a job's images (started, completed, stored, failed, flagged)
move it on: deadlines, settlements, storage, retries and variations, its end.

Each event is handled in a PostgreSQL transaction that locks the job's row first (or takes
the image's row first where the ledger is touched), changes state and stages the messages it
causes in the outbox; a redelivered event finds its effects already there and changes
nothing. Events the consumer loop hands over together share one transaction, in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import asyncpg

from imagegen.db import sql_literal, transient_as_retryable
from imagegen.kafka import Record, decode, handling
from schemas.events import (
    EVENT_ADAPTER,
    ConsistencyFlagged,
    Event,
    GenerationCompleted,
    GenerationFailed,
    GenerationStarted,
    ImageStored,
)
from schemas.jobs import GenerateImage
from schemas.requests import (
    JobKind,
)
from services.scheduler.day_totals import usd
from services.scheduler.dispatch import Dispatcher
from services.scheduler.jobs import CANCELLING, JobBook, lock_statement
from services.scheduler.ledger import Ledger
from services.scheduler.outbox import SOURCE, OutboxRelay, staged, transaction
from services.scheduler.overdue import AWAITING_COMPLETED, AWAITING_STORED
from services.scheduler.provider_health import ProviderHealth, counts_against
from services.scheduler.references import record_reference_set
from services.scheduler.retries import Retries
from services.scheduler.settings import SchedulerSettings
from services.scheduler.ticker import Ticker

log = logging.getLogger(__name__)


class Outcomes:
    """The `events` topic's handlers (the events of other services about a job's images)."""

    def __init__(
        self,
        settings: SchedulerSettings,
        pool: asyncpg.Pool,
        ledger: Ledger,
        book: JobBook,
        dispatcher: Dispatcher,
        retries: Retries,
        health: ProviderHealth,
        relay: OutboxRelay,
        ticker: Ticker,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self.ledger = ledger
        self._book = book
        self._dispatcher = dispatcher
        self._retries = retries
        self.health = health
        self.relay = relay
        self.ticker = ticker

    async def on_event(self, record: Record) -> None:
        event = decode(record, EVENT_ADAPTER)
        if not self._wanted(event):
            return
        self._track_health(event)
        before = staged()
        async with transient_as_retryable(), self._pool.acquire() as conn:
            await self._apply_alone(conn, event)
        self._wake_relay(before, [event])

    async def on_events(self, records: Sequence[Record]) -> None:
        """`on_event` for several records in one transaction (none when none is wanted)."""
        wanted = [
            (record, event)
            for record in records
            if self._wanted(event := decode(record, EVENT_ADAPTER))
        ]
        if not wanted:
            return
        for _, event in wanted:
            self._track_health(event)  # counted once per event id, whatever happens next
        before = staged()
        async with transient_as_retryable(), self._pool.acquire() as conn:
            if len(wanted) == 1:
                with handling(wanted[0][0]):
                    await self._apply_alone(conn, wanted[0][1])
            else:
                # The first event's first statement, if it has one of literals, goes with BEGIN.
                lead = self._lead(wanted[0][1])
                async with transaction(conn, lead):
                    for at, (record, event) in enumerate(wanted):
                        with handling(record):
                            await self._apply_event(conn, event, lead_sent=at == 0)
        self._wake_relay(before, [event for _, event in wanted])

    def _wake_relay(self, staged_before: int, events: Sequence[Event] = ()) -> None:
        """After a commit: publish what it staged now (nothing staged, no relay pass); and
        when an attempt failed or was flagged (a retry may now wait), the ticker looks."""
        if staged() > staged_before:
            self.relay.wake()
        if any(isinstance(e, GenerationFailed | ConsistencyFlagged) for e in events):
            self.ticker.wake()

    @staticmethod
    def _wanted(event: Event) -> bool:
        """Whether `_apply_event` does anything with `event` (no transaction otherwise)."""
        if event.source == SOURCE or not event.job_id:
            return False  # our own events (final failures, progress) need nothing more
        if isinstance(event, ConsistencyFlagged):
            return not event.data.final
        return isinstance(
            event, GenerationStarted | GenerationCompleted | ImageStored | GenerationFailed
        )

    async def _apply_alone(self, conn: asyncpg.Connection, event: Event) -> None:
        """`_apply_event` in a transaction of its own, in as few round trips as it allows:
        a `generation_started` is one statement (atomic without BEGIN and COMMIT); else the
        event's first statement goes with BEGIN where it has one (`_lead`)."""
        if isinstance(event, GenerationStarted):
            await self._apply_event(conn, event)
        else:
            async with transaction(conn, self._lead(event)):
                await self._apply_event(conn, event, lead_sent=True)

    def _lead(self, event: Event) -> str:
        """The first statement of `_apply_event` for `event` when it is one of literals, which
        may travel with BEGIN (the deadline update of a start or a completion, the job's lock
        for a stored image); else empty."""
        assert event.job_id is not None
        if isinstance(event, GenerationStarted):
            return _watch_statement(
                event.job_id,
                event.data.image_index,
                event.data.attempt,
                AWAITING_COMPLETED,
                self._settings.attempt_run_deadline_s,
            )
        if isinstance(event, ImageStored):
            return lock_statement(event.job_id)
        if isinstance(event, GenerationCompleted):
            # A completion names no attempt: the current one is meant.
            return _watch_statement(
                event.job_id,
                event.data.image_index,
                None,
                AWAITING_STORED,
                self._settings.attempt_store_deadline_s,
            )
        return ""

    async def _apply_event(
        self, conn: asyncpg.Connection, event: Event, *, lead_sent: bool = False
    ) -> None:
        """Apply one event (`lead_sent`: its `_lead` statement was sent already)."""
        assert event.job_id is not None
        if not lead_sent and (lead := self._lead(event)):
            # For a completion, before the ledger's locks: every path takes the image first.
            await conn.execute(lead)
        if isinstance(event, GenerationCompleted):
            await self.ledger.settle(
                conn,
                event.job_id,
                event.data.image_index,
                event.data.seed,
                usd(event.data.cost_usd),
                event.data.provider or event.data.backend,
            )
        elif isinstance(event, ImageStored):
            await self._stored(conn, event)
        elif isinstance(event, GenerationFailed):
            await self._failed(conn, event)
        elif isinstance(event, ConsistencyFlagged) and not event.data.final:
            await self._flagged(conn, event)

    def _track_health(self, event: object) -> None:
        """Attempt outcomes feed provider health (counted once per event id)."""
        if isinstance(event, GenerationFailed) and not event.data.final:
            self.health.failure(
                event.data.provider, retryable=counts_against(event.data), event_id=event.id
            )
        elif isinstance(event, GenerationCompleted):
            self.health.success(event.data.provider or event.data.backend, event_id=event.id)

    async def _current(
        self, conn: asyncpg.Connection, event: GenerationFailed | ConsistencyFlagged
    ) -> tuple[asyncpg.Record, asyncpg.Record, GenerateImage] | None:
        """The running job of `event`'s image, the image's row (both locked) and the
        message of its attempt in flight; None if the outcome is stale."""
        assert event.job_id is not None
        job = await self._dispatcher.lock_job(conn, event.job_id)
        if job is None or job["status"] not in ("running", CANCELLING):
            return None  # unknown or ended: late outcomes change nothing
        row = await conn.fetchrow(
            "SELECT * FROM job_images WHERE job_id = $1 AND image_index = $2 FOR UPDATE",
            event.job_id,
            event.data.image_index,
        )
        if row is None or row["status"] != "dispatched":
            return None
        return job, row, GenerateImage.model_validate_json(row["message"])

    async def _stored(self, conn: asyncpg.Connection, event: ImageStored) -> None:
        """After `_lead` locked the job: store the image (`JobBook.store`), book its cost,
        then progress, dependents or the job's end."""
        assert event.job_id is not None
        data = event.data
        cost = usd(data.cost_usd)
        keys = json.dumps({r.name: r.key for r in data.renditions})
        row = await self._book.store(conn, event.job_id, data.image_index, data.seed, keys)
        # The cost is booked even when the job is gone (cancelled): the money was spent.
        if row is None:
            await self.ledger.settle_stored(
                conn, event.job_id, data.image_index, data.seed, cost, data.provider
            )
            return
        await self.ledger.settle_stored_copy(conn, row["generation"], cost, data.provider)
        if not row["stored_now"]:
            return  # not dispatched (a redelivery), or the job ended: nothing more
        msg = GenerateImage.model_validate_json(row["message"])
        if msg.image.kind is JobKind.REFERENCE:
            await record_reference_set(conn, event.job_id, msg.character)
        # The row holds the job's columns and its counts after the store.
        await self._book.image_settled(conn, row, row["phase"], row)

    async def _failed(self, conn: asyncpg.Connection, event: GenerationFailed) -> None:
        current = await self._current(conn, event)
        if current is None:
            return
        job, row, msg = current
        if msg.image.attempt != event.data.attempt:
            return  # an earlier attempt's failure, redelivered
        if job["status"] == CANCELLING:
            await self._book.drop_in_flight(conn, job, row["image_index"], row["phase"])
            return
        await self._retries.failed(conn, job, row, event.data)

    async def _flagged(self, conn: asyncpg.Connection, event: ConsistencyFlagged) -> None:
        current = await self._current(conn, event)
        if current is None:
            return
        job, row, msg = current
        variation = event.data.variation + 1
        if job["status"] == CANCELLING and msg.image.variation == event.data.variation:
            # A non-final flag is not stored; no variation starts for a cancelled job.
            await self._book.drop_in_flight(conn, job, row["image_index"], row["phase"])
            return
        if msg.image.variation != event.data.variation or variation > msg.max_variations:
            return  # a redelivery, or postprocess forwards this one flagged
        await self._retries.vary(conn, job, row, variation)


def _watch_statement(
    job_id: str, index: int, attempt: int | None, awaiting: str, deadline_s: float
) -> str:
    """Give the dispatched image's attempt `deadline_s` to reach `awaiting`
    (`OverdueAttempts.fail` fails it after that), never back from awaiting storage: an
    update as a simple query (literals: it may follow BEGIN in one round trip); empty when
    no deadline is kept."""
    if deadline_s <= 0:
        return ""
    return (
        "UPDATE job_images SET due_at = now() + make_interval(secs =>"
        f" {sql_literal(repr(float(deadline_s)))}::float8), awaiting = {sql_literal(awaiting)}"
        f" WHERE job_id = {sql_literal(job_id)} AND image_index = {int(index)}"
        " AND status = 'dispatched'"
        + ("" if attempt is None else f" AND attempt = {int(attempt)}")
        + (
            ""
            if awaiting == AWAITING_STORED
            else f" AND awaiting IS DISTINCT FROM {sql_literal(AWAITING_STORED)}"
        )
    )
