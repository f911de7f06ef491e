"""Users' tails of the event log, kept complete from the commits' notes (the event feed's
memory, eventfeed.py).

Each user with open streams has a `UserTail`: their newest events as ready-to-send SSE
frames. `Tails` keeps `top`: every tail holds all of its user's events with
floor < id <= top. Log ids are taken under the projection's log lock, so they become
visible in id order, and each commit's note (notify.py, `CommitNote`) names its ids
`lo..hi` and `prev`, the newest id committed before them. Notes of this process's commits
come from its projection (`committed`), other replicas' in commit order on the process's
one listening connection; they are applied one at a time, in arrival order:

- hi <= top: already known (a note older than the read that set `top`);
- prev == top and the rows are this process's own (the projection hands them over before
  it commits, `expect`): appended without a query;
- prev == top and none of the note's users has a tail here: nothing to take, top = hi;
- otherwise (another replica's rows for a user with a tail here, or a gap: notes lost, a
  writer of an older version, another replica's NOTIFY still on its way behind this
  process's own later note): ONE read of (top, hi] for every user with a tail, shared
  by all their streams (consecutive notes waiting behind it are folded into the same
  read).

A rolled-back commit leaves a gap in the ids and sends no note: harmless, since the
chain is `prev`, not `lo - 1`. Streams are woken only after their rows are in the tail.

Freshness. While the listening connection stays up (its `epoch` unchanged since the last
read), the chain of notes is exact: a tail serves without a query (a read every
`live_max_age_s` is only a backstop). Without a note source (no listener, or a
reconnect: notes sent meanwhile are lost) a tail is fresh while no notification has
arrived for its user since the last read began and the read is younger than
`max_age_s`; otherwise the next stream to ask reads (top, newest] for everyone, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.gateway import sse
from services.gateway.notify import CommitNote, CommitNotes, EventSignal

log = logging.getLogger(__name__)

_EXPECTED_MAX = 64
"""Commits of this process's awaiting their note (older ones were lost or rolled back)."""


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


@dataclass(frozen=True, slots=True)
class LogRow:
    """A log row as the projection writes it (its id comes from the commit's note)."""

    job_id: str | None
    user_id: str | None
    type: str
    payload: str


def feed_event(event_id: int, job_id: str | None, kind: str, payload: str) -> FeedEvent:
    message = sse.message(payload, event=kind, id=str(event_id))
    return FeedEvent(event_id, job_id or "", kind, message)


class UserTail:
    """The newest events of one user's log: every event with floor < id <= top."""

    __slots__ = ("events", "floor", "snapshot", "streams", "top")

    def __init__(self, top: int) -> None:
        self.events: deque[FeedEvent] = deque()
        self.floor = top
        self.top = top  # the feed's top when this tail is current; -1: not yet
        self.snapshot: asyncio.Event | None = None
        self.streams = 0


# The log's newest id and, in the same snapshot, the rows after `$1` (up to `$2`, or the
# newest) of the users `$3`. One row with NULL event columns when there are none.
_READ = (
    "SELECT newest.top, e.id, e.job_id, e.user_id, e.type, e.payload"
    " FROM (SELECT coalesce(max(id), 0) AS top FROM events) AS newest"
    " LEFT JOIN LATERAL (SELECT id, job_id, user_id, type, payload FROM events"
    "  WHERE id > $1 AND id <= coalesce($2, newest.top) AND user_id = ANY($3::text[])"
    "  ORDER BY id LIMIT $4) AS e ON true"
)


class _Sync:
    """A queued request for a read up to the log's newest id."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Its askers may all have left: a failure is then nobody's to report.
        self.done.add_done_callback(lambda f: f.cancelled() or f.exception())


class Tails:
    """The tails of the users with open streams (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        signal: EventSignal,
        *,
        max_age_s: float,
        live_max_age_s: float,
        keep: int,
        page: int,
    ) -> None:
        self._pool = pool
        self._signal = signal
        self._notes = signal if isinstance(signal, CommitNotes) else None
        self._max_age_s = max_age_s
        self._live_max_age_s = max(live_max_age_s, max_age_s)
        self._keep = keep
        self.page = page
        self.by_user: dict[str, UserTail] = {}
        self.top: int | None = None  # None: not read since the first stream opened
        self._epoch: int | None = None  # the note source's epoch at the last read
        self._read_at = 0.0
        self._queue: deque[CommitNote | _Sync] = deque()
        self._sync: _Sync | None = None  # queued, not started: later askers share it
        self._worker: asyncio.Task[None] | None = None
        self._expected: OrderedDict[str, list[LogRow]] = OrderedDict()
        self._generation = 0  # moves when the feed stops keeping tails (no stream left)
        self.reads = 0
        """Tail reads made, for tests and benchmarks."""
        self.pushed = 0
        """Events taken in from this process's own commits, without a query."""

    def open(self, user_id: str) -> None:
        """A stream of the user's opens (its user's tail lives while any stream does)."""
        if not self.by_user and self._notes is not None:
            self._notes.subscribe(self.on_note)
        tail = self.by_user.get(user_id)
        if tail is None:
            # Complete for (top, top] at once; a read in flight that did not ask for this
            # user resets it to its own top (see `_advance`).
            tail = self.by_user[user_id] = UserTail(-1 if self.top is None else self.top)
        tail.streams += 1

    def close(self, user_id: str) -> None:
        """A stream of the user's ended; with the last stream of all, nothing is kept."""
        tail = self.by_user.get(user_id)
        if tail is not None:
            tail.streams -= 1
            if tail.streams <= 0:
                del self.by_user[user_id]
        if not self.by_user:
            if self._notes is not None:
                self._notes.unsubscribe(self.on_note)
            # Nothing is kept: the next stream starts from a fresh read.
            self.top, self._epoch = None, None
            self._generation += 1
            self._expected.clear()

    def current(self, user_id: str, tail: UserTail) -> bool:
        """Whether `tail` holds everything of its user's up to the newest commit."""
        return self.top is not None and tail.top == self.top and self._fresh(user_id, tail)

    def _fresh(self, user_id: str, tail: UserTail) -> bool:
        age = time.monotonic() - self._read_at
        epoch = None if self._notes is None else self._notes.epoch
        if epoch is not None and epoch == self._epoch:
            return age < self._live_max_age_s  # every commit's note reaches us in order
        current = self._signal.listen(user_id)
        return tail.snapshot is current and not current.is_set() and age < self._max_age_s

    async def read_all(self) -> None:
        """Read up to the log's newest id for every tail: one read, shared by all askers."""
        if self._sync is None:
            self._sync = _Sync()
            self._queue.append(self._sync)
            self._kick()
        # Shielded: the stream that asked may leave; the others still wait.
        await asyncio.shield(self._sync.done)

    # -- the projection's side ---------------------------------------------------------

    def expect(self, token: str, rows: Sequence[LogRow]) -> None:
        """This process is about to commit `rows` (in id order) under `token`: kept until
        the commit's note names their ids, so that no stream here reads them back."""
        if self._notes is None or not self.by_user:
            return
        self._expected[token] = list(rows)
        while len(self._expected) > _EXPECTED_MAX:
            self._expected.popitem(last=False)

    def forget(self, token: str) -> None:
        """The commit `expect`ed under `token` did not happen."""
        self._expected.pop(token, None)

    def committed(self, note: CommitNote) -> None:
        """This process's commit of `note` happened (its rows were `expect`ed under its
        token): taken in like a note from the listener, in order with theirs (a copy that
        also comes by NOTIFY finds its ids known and changes nothing); without a note
        source, its users are woken here."""
        if self._notes is not None and self.by_user:
            self.on_note(note)
            return
        if note.token is not None:
            self._expected.pop(note.token, None)
        self._wake(note.users)

    # -- notes and reads, one at a time -------------------------------------------------

    def on_note(self, note: CommitNote) -> None:
        self._queue.append(note)
        self._kick()

    def _kick(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="event-feed")

    async def _work(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Sync):
                if self._sync is item:
                    self._sync = None  # from now on, askers need a read that starts later
                try:
                    await self._read(None)
                except asyncio.CancelledError:
                    item.done.cancel()
                    raise
                except Exception as exc:
                    log.warning("event=event_feed_read_failed error=%r", exc)
                    self._epoch = None  # unsure of what was missed: read again next time
                    item.done.set_exception(exc)
                else:
                    item.done.set_result(None)
                continue
            try:
                await self._apply(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=event_feed_read_failed error=%r", exc)
                self._epoch = None
                self._wake(item.users)

    async def _apply(self, note: CommitNote) -> None:
        pending = self._take_expected(note.token)
        if not note.ranged:
            # Ids unknown (a writer of an older version): the next ask reads.
            self._epoch = None
            self._wake(note.users)
            return
        assert note.prev is not None and note.lo is not None and note.hi is not None
        top = self.top
        if top is None or not self.by_user:
            self._wake(note.users)  # nothing kept yet: the streams' next ask reads
            return
        if note.hi <= top:
            return
        if note.prev == top:
            current = {id(tail) for tail in self.by_user.values()}
            if pending is not None and len(pending) == note.hi - note.lo + 1:
                self.pushed += len(pending)
                self._advance(note.hi, list(enumerate(pending, note.lo)), current, note.users)
                return
            if note.users is not None and not any(u in self.by_user for u in note.users):
                self._advance(note.hi, [], current, note.users)
                return
        # Another process's rows, or a gap: one read, for the notes queued behind too.
        hi = note.hi
        while self._queue and isinstance(ahead := self._queue[0], CommitNote) and ahead.ranged:
            self._queue.popleft()
            self._take_expected(ahead.token)
            assert ahead.hi is not None
            hi = max(hi, ahead.hi)
        await self._read(hi)

    def _take_expected(self, token: str | None) -> list[LogRow] | None:
        if token is None or token not in self._expected:
            return None
        # Notes come in commit order: this process's commits before this one are done.
        while True:
            key, value = self._expected.popitem(last=False)
            if key == token:
                return value

    async def _read(self, upto: int | None) -> None:
        """Read (top, upto] (or up to the newest id) for every user with a tail."""
        generation = self._generation
        users = list(self.by_user)
        known = {id(tail) for tail in self.by_user.values()}
        for user, tail in self.by_user.items():
            tail.snapshot = self._signal.listen(user)  # before the read: see `_fresh`
        epoch = None if self._notes is None else self._notes.epoch
        started = time.monotonic()
        self.reads += 1
        since = -1 if self.top is None else self.top
        fetched = await self._pool.fetch(_READ, since, upto, users if since >= 0 else [], self.page)
        if generation != self._generation:
            return  # every stream left meanwhile: notes may have been missed since
        rows = [
            (int(r["id"]), LogRow(r["job_id"], r["user_id"], r["type"], r["payload"]))
            for r in fetched
            if r["id"] is not None
        ]
        reached = int(fetched[0]["top"]) if upto is None else max(upto, since)
        if len(rows) == self.page:
            # Too far behind to keep: every tail starts afresh; streams read for themselves.
            rows, known = [], set()
        self._epoch, self._read_at = epoch, started
        self._advance(reached, rows, known, None)

    def _advance(
        self,
        top: int,
        rows: list[tuple[int, LogRow]],
        known: set[int],
        users: tuple[str, ...] | None,
    ) -> None:
        """The log is known up to `top`: each tail that was current before and is in
        `known` (the tails the rows were gathered for) takes its rows; any other starts
        again, empty, at `top` (its streams read what lies below for themselves)."""
        before = self.top
        current = {
            user
            for user, tail in self.by_user.items()
            if before is not None and tail.top == before and id(tail) in known
        }
        woken: set[str] = set(users or ())
        added: dict[str, int] = {}
        for event_id, row in rows:
            if row.user_id in current:
                tail = self.by_user[row.user_id]
                tail.events.append(feed_event(event_id, row.job_id, row.type, row.payload))
                added[row.user_id] = added.get(row.user_id, 0) + 1
        for user, tail in self.by_user.items():
            if user in current:
                # Kept: the new events (every stream of the user is about to take them)
                # and a few before; a stream further behind reads for itself.
                while len(tail.events) > max(self._keep, added.get(user, 0)):
                    tail.floor = tail.events.popleft().id
            else:
                tail.events.clear()
                tail.floor = top
                woken.add(user)
            tail.top = top
        self.top = top
        self._wake(tuple(woken | added.keys()))

    def _wake(self, users: tuple[str, ...] | None) -> None:
        if users is None:
            for user in list(self.by_user):
                self._signal.notify(user)
            return
        for user in users:
            self._signal.notify(user)

    async def aclose(self) -> None:
        """Stop the worker (the app's lifespan, at shutdown)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for item in self._queue:
            if isinstance(item, _Sync):
                item.done.cancel()
        self._queue.clear()
