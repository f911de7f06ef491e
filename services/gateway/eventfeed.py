"""The event log as the gateway's streams read it: one read per wake for all of a user's
streams, and each event encoded once for all of them.

Without it every open stream re-read the log on every wake (a user with ten tabs cost ten
queries per event) and encoded every event itself. Here each user with open streams has
a `_UserTail`: the newest part of their log, read once per wake by whichever stream asks
first (the others await that same read) and kept as ready-to-send SSE frames. A stream
takes from the tail what lies after its own position (its job's events, or all), so a
stream costs its generator and its position, not a query.

Freshness is exact, not timed: a tail is fresh while the signal's listen event taken
before its read is still the current one and unset, i.e. no notification has arrived
since the read began. Notifications come only after commit, so a fresh tail holds every
event any stream was told about. The tail also goes stale after `max_age_s`, so that the
streams' periodic re-read still covers a lost listening connection: then one query per
user per interval, not one per stream.

A stream whose position lies below the tail (a resume from an old id, a job replayed from
its start, a reader slower than the tail's length) reads the log itself until it catches
up: ids become visible in id order (see the projection), so a position means "everything
up to here was seen".

The feed also keeps time for all streams, so that no stream needs a timer or a task of
its own: while any stream is open, one ticker wakes every stream each `tick_s` (the
streams' periodic re-read and heartbeats hang on it; a tick leaves a fresh tail fresh, so
it costs no read unless the tail has aged), and when the server is stopping it wakes them
with `closing` set, so that every stream ends at once instead of holding up the shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import asyncpg

from services.gateway import sse
from services.gateway.notify import EventSignal

CLOSING_CHECK_S = 0.5
"""How often the ticker asks whether the server is stopping."""


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One logged event with its SSE message, shared by every stream that sends it."""

    id: int
    job_id: str
    type: str
    message: sse.SseMessage

    def with_retry(self, retry_ms: int) -> sse.SseMessage:
        """The message with a reconnection hint (a connection's first message carries it)."""
        return sse.with_retry(self.message, retry_ms)


def _event(row: asyncpg.Record) -> FeedEvent:
    event_id, kind = row["id"], row["type"]
    message = sse.message(row["payload"], event=kind, id=str(event_id))
    return FeedEvent(event_id, row["job_id"], kind, message)


class _UserTail:
    """The newest events of one user's log: every event with floor < id <= top."""

    __slots__ = ("complete", "events", "floor", "read_at", "reading", "snapshot", "streams", "top")

    def __init__(self) -> None:
        self.events: deque[FeedEvent] = deque()
        self.floor = -1  # below any id: nothing read yet
        self.top = -1
        self.snapshot: asyncio.Event | None = None
        self.read_at = 0.0
        self.complete = False
        self.reading: asyncio.Task[None] | None = None
        self.streams = 0


_TAIL_READ = (
    "SELECT id, job_id, type, payload FROM events WHERE user_id = $1 AND id > $2"
    " ORDER BY id LIMIT $3"
)
_NEWEST = "SELECT coalesce(max(id), 0) FROM events WHERE user_id = $1"
# A stream behind the tail: its events after its position, and the log's newest id in
# the same snapshot (how far the answer covers when it is not a full page). One row with
# NULL event columns when nothing follows the position.
_CATCH_UP = (
    "SELECT newest.top, e.id, e.job_id, e.type, e.payload"
    " FROM (SELECT coalesce(max(id), 0) AS top FROM events WHERE user_id = $1) AS newest"
    " LEFT JOIN LATERAL (SELECT id, job_id, type, payload FROM events"
    "  WHERE user_id = $1 AND id > $2 AND ($4::text IS NULL OR job_id = $4)"
    "  ORDER BY id LIMIT $3) AS e ON true"
)


class EventFeed:
    """Reads users' event logs for their streams (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        signal: EventSignal,
        *,
        max_age_s: float,
        keep: int = 32,
        page: int = 200,
    ) -> None:
        self._pool = pool
        self._signal = signal
        self._max_age_s = max_age_s
        self._keep = keep
        self._page = page
        self._tails: dict[str, _UserTail] = {}
        self._tick_s = max_age_s
        self._ticker: asyncio.Task[None] | None = None
        self.ticks = 0
        """Ticks so far: a stream that sees it move knows its wake-up was (also) a tick."""
        self.closing = False
        """Set when the server is stopping: every stream ends at its next wake-up."""
        self.exiting = sse.server_exiting
        """Whether the server is stopping (uvicorn's flag by default)."""
        self.reads = 0
        """Queries made (tail reads and catch-ups), for tests and benchmarks."""

    def attach(self, user_id: str, tick_s: float | None = None) -> None:
        """A stream of the user's opens (its user's tail lives while any stream does);
        it wants a wake-up at least every `tick_s` (the ticker serves the shortest)."""
        tail = self._tails.get(user_id)
        if tail is None:
            tail = self._tails[user_id] = _UserTail()
        tail.streams += 1
        if tick_s is not None and tick_s < self._tick_s:
            self._tick_s = tick_s
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="sse-ticker")

    def detach(self, user_id: str) -> None:
        tail = self._tails.get(user_id)
        if tail is not None:
            tail.streams -= 1
            if tail.streams <= 0:
                del self._tails[user_id]
        if not self._tails and self._ticker is not None:
            self._ticker.cancel()  # no stream left to wake
            self._ticker = None

    async def _tick(self) -> None:
        """Wake every stream each `tick_s`, and at once when the server starts stopping."""
        due = time.monotonic() + self._tick_s
        while self._tails:
            await asyncio.sleep(max(0.0, min(CLOSING_CHECK_S, due - time.monotonic())))
            if not self.closing and self.exiting():
                self.closing = True
            elif time.monotonic() < due:
                continue
            due = time.monotonic() + self._tick_s
            self.ticks += 1
            self.wake_all()

    def wake_all(self) -> None:
        """Wake every open stream. Not a notification of new events: a tail that was fresh
        stays fresh (nothing was announced between its read and now), so the wake-up costs
        a read only where the tail has aged past `max_age_s`."""
        signal = self._signal
        for user_id, tail in self._tails.items():
            current = signal.listen(user_id)
            fresh = tail.snapshot is current and not current.is_set()
            signal.notify(user_id)
            if fresh:
                tail.snapshot = signal.listen(user_id)

    @property
    def users(self) -> int:
        return len(self._tails)

    async def newest_id(self, user_id: str) -> int:
        """The id of the user's newest logged event (0 for none): where a live stream starts."""
        self.reads += 1
        return int(await self._pool.fetchval(_NEWEST, user_id))

    async def after(
        self, user_id: str, job_id: str | None, position: int
    ) -> tuple[list[FeedEvent], int]:
        """The user's events (the job's, or all) with ids above `position`, in id order,
        and the new position: every such event up to it is in the answer. Call it after
        taking the signal's listen event, as a stream does, and an event announced
        before that call is in the answer or below the position it starts from."""
        tail = self._tails.get(user_id)
        if tail is None:  # a caller that did not attach: no sharing, still exact
            return await self._catch_up(user_id, job_id, position)
        while True:
            if position < tail.floor:
                return await self._catch_up(user_id, job_id, position)  # a fresh read too
            current = self._signal.listen(user_id)
            if (
                tail.snapshot is current
                and not current.is_set()
                and tail.complete
                and time.monotonic() - tail.read_at < self._max_age_s
            ):
                found = [
                    e
                    for e in tail.events
                    if e.id > position and (job_id is None or e.job_id == job_id)
                ]
                return found, max(position, tail.top)
            if tail.reading is None:
                tail.reading = asyncio.ensure_future(self._refresh(user_id, tail))
            # Shielded: the stream that started the read may leave; the others still wait.
            await asyncio.shield(tail.reading)

    async def _refresh(self, user_id: str, tail: _UserTail) -> None:
        try:
            snapshot = self._signal.listen(user_id)  # before the read: see `after`
            started = time.monotonic()
            self.reads += 1
            if tail.floor < 0:
                newest = int(await self._pool.fetchval(_NEWEST, user_id))
                tail.floor = tail.top = newest
                complete = True
            else:
                rows = await self._pool.fetch(_TAIL_READ, user_id, tail.top, self._page)
                for row in rows:
                    tail.events.append(_event(row))
                if rows:
                    tail.top = tail.events[-1].id
                # Kept: this read's events (every stream of the user is about to take them)
                # and a few before; a stream further behind reads for itself.
                while len(tail.events) > max(self._keep, len(rows)):
                    tail.floor = tail.events.popleft().id
                complete = len(rows) < self._page
            tail.snapshot, tail.read_at, tail.complete = snapshot, started, complete
        finally:
            tail.reading = None

    async def _catch_up(
        self, user_id: str, job_id: str | None, position: int
    ) -> tuple[list[FeedEvent], int]:
        self.reads += 1
        rows = await self._pool.fetch(_CATCH_UP, user_id, position, self._page, job_id)
        events = [_event(row) for row in rows if row["id"] is not None]
        if len(events) == self._page:
            return events, events[-1].id
        # Not a full page: everything of the stream's up to the log's newest id is here.
        return events, max(position, int(rows[0]["top"]))
