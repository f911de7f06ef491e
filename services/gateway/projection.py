"""The read model: jobs, images and the event log, projected from the `events` topic.

A batch of events (what the consumer loop handed over together; one event is a batch of
one) is applied in one transaction, in order: an event already in the log is a redelivery
and changes nothing; every other one gets its job's next `seq`, is folded into its job and
image rows, and is appended to the log once, with its final payload. The commit sends one
NOTIFY naming the log ids it appended, the id committed before them and the owners
(notify.py, `CommitNote`); this process's event feed is handed the rows before the commit,
so its streams get them from memory once the note names their ids, and other replicas
read only what they did not write.

Round trips per batch: BEGIN with the log lock (one simple query), per event one statement
for its job (its next seq, the fold, and whether the job has a webhook) and one for its
image where it changes one (folding.py), then the log rows, the NOTIFY and COMMIT in one
simple query. Duplicates are rare
(redeliveries): a batch is applied without checking for them first, and one that holds a
duplicate fails on the log's unique event_id, rolls back whole, and is applied again with
the check.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Sequence
from contextlib import nullcontext

import asyncpg

from imagegen.db import begun, sql_literal, transient_as_retryable
from imagegen.kafka import Record, decode, handling
from schemas.events import EVENT_ADAPTER, Event
from services.gateway.eventfeed import EventFeed, LogRow
from services.gateway.folding import fold_image, fold_job
from services.gateway.notify import CHANNEL, EventSignal, note_header
from services.gateway.webhooks import store as webhook_store
from services.gateway.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)

# Appends are serialised (across replicas too) so that event ids become visible in id
# order: a stream that has read up to id N can never later miss an id below N.
_EVENT_LOG_LOCK = 0x6761_7465_7761_79  # "gateway"

_Row = tuple[str, str | None, str | None, str, int | None, str]
"""An event's log row: event_id, job_id, user_id, type, seq, payload."""


class Projection:
    def __init__(
        self,
        pool: asyncpg.Pool,
        signal: EventSignal,
        webhooks: WebhookDispatcher | None = None,
        feed: EventFeed | None = None,
    ) -> None:
        self._pool = pool
        self._signal = signal
        self._webhooks = webhooks
        self._feed = feed
        # Names this process's commits in their notes (see EventFeed.expect).
        self._tokens = (f"{secrets.token_hex(4)}.{n}" for n in itertools.count())

    async def handle(self, record: Record) -> None:
        """The consumer loop's handler for the events topic (one record, in its own span)."""
        event = decode(record, EVENT_ADAPTER)
        async with transient_as_retryable():
            await self.apply_all([event])

    async def handle_batch(self, records: Sequence[Record]) -> None:
        """The consumer loop's batch handler: all of `records` in one transaction, each in
        its own trace's span."""
        events = [decode(record, EVENT_ADAPTER) for record in records]
        async with transient_as_retryable():
            await self.apply_all(events, records)

    async def apply(self, event: Event) -> str | None:
        """Project one event; returns its owner, None for a duplicate or ownerless one."""
        owners = await self.apply_all([event])
        return owners[0] if owners else None

    async def apply_all(
        self, events: Sequence[Event], records: Sequence[Record] | None = None
    ) -> list[str]:
        """Project `events` in order in one transaction and wake their owners' streams;
        returns the owners. `records`, when given, are the records they came from (for
        each one's trace)."""
        token = next(self._tokens)
        async with self._pool.acquire() as conn:
            try:
                owners, hooks = await self._apply(conn, events, records, token, optimistic=True)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "events_event_id_key":
                    raise
                # An event already in the log (a redelivery): everything was rolled back;
                # again, with the duplicate check first.
                token = next(self._tokens)
                owners, hooks = await self._apply(conn, events, records, token, optimistic=False)
        if self._feed is not None:
            self._feed.committed(token, list(owners))
        else:
            for owner in owners:
                self._signal.notify(owner)
        if hooks and self._webhooks is not None:
            self._webhooks.wake()
        return list(owners)

    async def _apply(
        self,
        conn: asyncpg.Connection,
        events: Sequence[Event],
        records: Sequence[Record] | None,
        token: str,
        *,
        optimistic: bool,
    ) -> tuple[dict[str, None], list[str]]:
        """One transaction. `optimistic`: no duplicate check first; a duplicate then fails
        the log's unique event_id, which rolls everything back (the caller retries)."""
        owners: dict[str, None] = {}
        hooks: list[str] = []
        # BEGIN and the lock in one round trip; the rest of the transaction below, its
        # COMMIT with the log rows (a failure rolls it back).
        try:
            async with begun(conn, f"SELECT pg_advisory_xact_lock({_EVENT_LOG_LOCK})"):
                seen: set[str] = set()
                if not optimistic:
                    seen.update(
                        await conn.fetchval(
                            "SELECT coalesce(array_agg(event_id), '{}') FROM events"
                            " WHERE event_id = ANY($1::text[])",
                            [event.id for event in events],
                        )
                    )
                rows: list[_Row] = []
                for at, event in enumerate(events):
                    if event.id in seen:
                        log.info(
                            "event=duplicate_event_ignored event_id=%s type=%s",
                            event.id,
                            event.type,
                        )
                        continue
                    seen.add(event.id)
                    with handling(records[at]) if records else nullcontext():
                        await _fold(conn, event, rows, owners, hooks)
                # Ids are taken in order, under the lock: they become visible in order. The
                # NOTIFY is sent at commit: it wakes streams on every replica.
                if self._feed is not None and rows:
                    self._feed.expect(token, [LogRow(r[1], r[2], r[3], r[5]) for r in rows])
                await conn.execute(_closing(rows, owners, token))
        except BaseException:
            if self._feed is not None:
                self._feed.forget(token)
            raise
        return owners, hooks


async def _fold(
    conn: asyncpg.Connection,
    event: Event,
    rows: list[_Row],
    owners: dict[str, None],
    hooks: list[str],
) -> None:
    """Fold one new event into its job and image rows; note its log row and its owner."""
    owner, seq, job = event.user_id, None, None
    if event.job_id is not None:
        job = await fold_job(conn, event.job_id, event)
        if job is not None:
            owner, seq = job.user_id, job.seq
    await fold_image(conn, owner, event)
    # The delivery commits with the projection (or neither does); sent later.
    if (
        job is not None
        and job.hooked
        and (hook := await webhook_store.enqueue(conn, event)) is not None
    ):
        hooks.append(hook)
    payload = event.model_copy(update={"seq": seq, "user_id": owner})
    rows.append((event.id, event.job_id, owner, event.type, seq, payload.model_dump_json()))
    if owner is not None:
        owners[owner] = None


def _closing(rows: Sequence[_Row], owners: dict[str, None], token: str) -> str:
    """The log rows in order, the commit's note and COMMIT, as one simple query.

    The note's `prev` is the log's newest id before these rows: the statement's snapshot
    does not see its own inserts, and every earlier append has committed (the lock).
    """
    if not rows:
        return "COMMIT"
    values = ", ".join(
        f"({', '.join(sql_literal(v) for v in row[:5])}, {sql_literal(row[5])}::jsonb)"
        for row in rows
    )
    header = sql_literal(note_header(token, list(owners)))
    return (
        "WITH logged AS (INSERT INTO events (event_id, job_id, user_id, type, seq, payload)"
        f" VALUES {values} RETURNING id)"
        f" SELECT pg_notify({sql_literal(CHANNEL)}, ({header}::jsonb || jsonb_build_object("
        "'prev', (SELECT coalesce(max(id), 0) FROM events), 'lo', min(id), 'hi', max(id)"
        "))::text) FROM logged; COMMIT"
    )
