"""The event log as the gateway's streams read it: kept in memory from the commits' notes,
read from the database only for what this process did not write itself.

Each user with open streams has a tail (tails.py): their newest events as ready-to-send
SSE frames, kept complete from the commits' notes. A stream takes from the tail what lies
after its own position (its job's events, or all), so a stream costs its generator and
its position, not a query, and each event is encoded once for every stream.

A stream whose position lies below its tail (a resume from an old id, a job replayed from
its start, a reader slower than the tail's length) reads the log itself until it catches
up: a position means "everything up to here was seen".

The feed also keeps time for all streams, so that no stream needs a timer or a task of
its own: while any stream is open, one ticker wakes every stream each `tick_s` (the
streams' periodic re-read and heartbeats hang on it; a tick costs no read unless the
tail has aged), and when the server is stopping it wakes them with `closing` set, so
that every stream ends at once instead of holding up the shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg

from services.gateway import sse
from services.gateway.notify import CommitNote, EventSignal
from services.gateway.tails import FeedEvent, LogRow, Tails, feed_event

__all__ = ["EventFeed", "FeedEvent", "LogRow"]

CLOSING_CHECK_S = 0.5
"""How often the ticker asks whether the server is stopping."""

_NEWEST = "SELECT coalesce(max(id), 0) FROM events"
# A stream behind the tail: its events after its position, and the log's newest id in
# the same snapshot (how far the answer covers when it is not a full page). One row with
# NULL event columns when nothing follows the position.
_CATCH_UP = (
    "SELECT newest.top, e.id, e.job_id, e.type, e.payload"
    " FROM (SELECT coalesce(max(id), 0) AS top FROM events) AS newest"
    " LEFT JOIN LATERAL (SELECT id, job_id, type, payload FROM events"
    "  WHERE user_id = $1 AND id > $2 AND ($4::text IS NULL OR job_id = $4)"
    "  ORDER BY id LIMIT $3) AS e ON true"
)


class EventFeed:
    """Keeps users' event logs for their streams (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        signal: EventSignal,
        *,
        max_age_s: float,
        live_max_age_s: float = 60.0,
        keep: int = 32,
        page: int = 200,
    ) -> None:
        self._pool = pool
        self._signal = signal
        self.tails = Tails(
            pool, signal, max_age_s=max_age_s, live_max_age_s=live_max_age_s, keep=keep, page=page
        )
        self._tick_s = max_age_s
        self._ticker: asyncio.Task[None] | None = None
        self._catch_ups = 0
        self.ticks = 0
        """Ticks so far: a stream that sees it move knows its wake-up was (also) a tick."""
        self.closing = False
        """Set when the server is stopping: every stream ends at its next wake-up."""
        self.exiting = sse.server_exiting
        """Whether the server is stopping (uvicorn's flag by default)."""

    @property
    def reads(self) -> int:
        """Queries made (tail reads and catch-ups), for tests and benchmarks."""
        return self.tails.reads + self._catch_ups

    @property
    def pushed(self) -> int:
        """Events taken in from this process's own commits, without a query."""
        return self.tails.pushed

    # -- streams ---------------------------------------------------------------------

    def attach(self, user_id: str, tick_s: float | None = None) -> None:
        """A stream of the user's opens; it wants a wake-up at least every `tick_s` (the
        ticker serves the shortest)."""
        self.tails.open(user_id)
        if tick_s is not None and tick_s < self._tick_s:
            self._tick_s = tick_s
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="sse-ticker")

    def detach(self, user_id: str) -> None:
        self.tails.close(user_id)
        if not self.tails.by_user and self._ticker is not None:
            self._ticker.cancel()  # no stream left to wake
            self._ticker = None

    async def _tick(self) -> None:
        """Wake every stream each `tick_s`, and at once when the server starts stopping."""
        due = time.monotonic() + self._tick_s
        while self.tails.by_user:
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
        a read only where the tail has aged."""
        signal = self._signal
        for user_id, tail in self.tails.by_user.items():
            current = signal.listen(user_id)
            fresh = tail.snapshot is current and not current.is_set()
            signal.notify(user_id)
            if fresh:
                tail.snapshot = signal.listen(user_id)

    @property
    def users(self) -> int:
        return len(self.tails.by_user)

    async def newest_id(self, user_id: str) -> int:
        """The log's newest id (0 for none): where a live stream of `user_id` starts."""
        self._catch_ups += 1
        return int(await self._pool.fetchval(_NEWEST))

    async def after(
        self, user_id: str, job_id: str | None, position: int, *, exact: bool = False
    ) -> tuple[list[FeedEvent], int]:
        """The user's events (the job's, or all) with ids above `position`, in id order,
        and the new position: every such event up to it is in the answer. Call it after
        taking the signal's listen event, as a stream does, and an event announced
        before that call is in the answer or below the position it starts from.

        `exact`: every event committed before the call is in the answer, announced or not
        (a read of the log: the tail may not have a commit's note yet)."""
        tails = self.tails
        tail = tails.by_user.get(user_id)
        if tail is None or exact:  # no sharing, still exact
            return await self._catch_up(user_id, job_id, position)
        while not tails.current(user_id, tail):
            await tails.read_all()
            tail = tails.by_user.get(user_id) or tail
        if position < tail.floor:
            floor = tail.floor
            found, reached = await self._catch_up(user_id, job_id, position)
            # Not a full page: every event of the user's up to the tail's floor was in it
            # (those ids were committed before this read began).
            return found, reached if len(found) == tails.page else max(reached, floor)
        found = [
            e for e in tail.events if e.id > position and (job_id is None or e.job_id == job_id)
        ]
        return found, max(position, tail.top)

    async def _catch_up(
        self, user_id: str, job_id: str | None, position: int
    ) -> tuple[list[FeedEvent], int]:
        self._catch_ups += 1
        page = self.tails.page
        rows = await self._pool.fetch(_CATCH_UP, user_id, position, page, job_id)
        events = [
            feed_event(row["id"], row["job_id"], row["type"], row["payload"])
            for row in rows
            if row["id"] is not None
        ]
        if len(events) == page:
            return events, events[-1].id
        # Not a full page: everything of the stream's up to the log's newest id is here.
        return events, max(position, int(rows[0]["top"]))

    # -- the projection's side (tails.py) ------------------------------------------------

    def expect(self, token: str, rows: Sequence[LogRow]) -> None:
        self.tails.expect(token, rows)

    def forget(self, token: str) -> None:
        self.tails.forget(token)

    def committed(self, note: CommitNote) -> None:
        self.tails.committed(note)

    async def aclose(self) -> None:
        """Stop the worker (the app's lifespan, at shutdown)."""
        await self.tails.aclose()
