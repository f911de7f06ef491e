"""The read model: jobs, images and the event log, projected from the `events` topic.

A batch of events (what the consumer loop handed over together; one event is a batch of
one) is applied in one transaction, in order: an event already in the log is a redelivery
and changes nothing; every other one gets its job's next `seq`, is folded into its job and
image rows, and is appended to the log once, with its final payload. The commit's note
(notify.py, `CommitNote`: the log ids it appended, the id committed before them and the
owners) goes to this process's event feed, which was handed the rows before the commit,
so its streams get them from memory; other replicas get the note as a NOTIFY (sent only
while one is listening) and read only what they did not write.

Round trips per batch: BEGIN with the log lock (one simple query), per event one statement
for its job (its next seq, the fold, and whether the job has a webhook) and one for its
image where it changes one (folding.py), then one for the log rows, the note and the
NOTIFY, and COMMIT. Duplicates are rare (redeliveries): a batch is applied without
checking for them first, and one that holds a duplicate fails on the log's unique
event_id, rolls back whole, and is applied again with the check.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Sequence
from contextlib import nullcontext

import asyncpg

from imagegen.db import begun, transient_as_retryable
from imagegen.kafka import Record, decode, handling
from schemas.events import EVENT_ADAPTER, Event
from services.gateway.eventfeed import EventFeed, LogRow
from services.gateway.folding import fold_image, fold_job
from services.gateway.notify import (
    CHANNEL,
    EVENT_LOG_LOCK,
    LISTENER_NAME,
    CommitNote,
    EventSignal,
    PgEventSignal,
    note_header,
)
from services.gateway.webhooks import store as webhook_store
from services.gateway.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)

# The log rows in order (ids are taken in it, under the log lock, so they become visible
# in id order: a stream that has read up to id N can never later miss an id below N), and
# the commit's note. `prev` is the log's newest id before these rows: the statement's
# snapshot does not see its own inserts, and every earlier append has committed (the
# lock). The note goes out as a NOTIFY only while another replica's listener ($8: name,
# $9: this replica's own listener's pid) is connected.
_CLOSING = (
    "WITH logged AS (INSERT INTO events (event_id, job_id, user_id, type, seq, payload)"
    " SELECT event_id, job_id, user_id, type, seq, payload::jsonb"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[])"
    " WITH ORDINALITY AS r(event_id, job_id, user_id, type, seq, payload, n) ORDER BY n"
    " RETURNING id),"
    " note AS (SELECT (SELECT coalesce(max(id), 0) FROM events) AS prev,"
    " min(id) AS lo, max(id) AS hi FROM logged)"
    " SELECT prev, lo, hi, (SELECT count(*) FROM (SELECT pg_notify($10, ($7::jsonb"
    " || jsonb_build_object('prev', prev, 'lo', lo, 'hi', hi))::text)"
    " WHERE EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = $8 AND pid <> $9)) AS sent) AS notified FROM note"
)

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
        self.feed = feed
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
                owners, hooks, note = await self._apply(
                    conn, events, records, token, optimistic=True
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "events_event_id_key":
                    raise
                # An event already in the log (a redelivery): everything was rolled back;
                # again, with the duplicate check first.
                token = next(self._tokens)
                owners, hooks, note = await self._apply(
                    conn, events, records, token, optimistic=False
                )
        if self.feed is not None and note is not None:
            self.feed.committed(note)
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
    ) -> tuple[dict[str, None], list[str], CommitNote | None]:
        """One transaction; its note (None: nothing appended). `optimistic`: no duplicate
        check first; a duplicate then fails the log's unique event_id, which rolls
        everything back (the caller retries)."""
        owners: dict[str, None] = {}
        hooks: list[str] = []
        note: CommitNote | None = None
        # BEGIN and the lock in one round trip (a failure below rolls it back).
        try:
            async with begun(conn, f"SELECT pg_advisory_xact_lock({EVENT_LOG_LOCK})"):
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
                if rows:
                    if self.feed is not None:
                        self.feed.expect(token, [LogRow(r[1], r[2], r[3], r[5]) for r in rows])
                    note = await self._append(conn, rows, list(owners), token)
        except BaseException:
            if self.feed is not None:
                self.feed.forget(token)
            raise
        return owners, hooks, note

    async def _append(
        self, conn: asyncpg.Connection, rows: Sequence[_Row], owners: list[str], token: str
    ) -> CommitNote:
        """The log rows and the note (see `_CLOSING`); COMMIT is `begun`'s."""
        own = self._signal.listener_pid if isinstance(self._signal, PgEventSignal) else None
        written = await conn.fetchrow(
            _CLOSING,
            *([row[i] for row in rows] for i in range(6)),
            note_header(token, owners),
            LISTENER_NAME,
            own or 0,
            CHANNEL,
        )
        assert written is not None
        return CommitNote(
            users=tuple(owners),
            prev=int(written["prev"]),
            lo=int(written["lo"]),
            hi=int(written["hi"]),
            token=token,
        )


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
