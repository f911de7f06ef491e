"""Wake-ups for event streams when the projection commits new events, on every replica.

A stream reads the event log, then waits on its user's signal before reading again.
Each projection commit makes one `CommitNote` (the log ids it appended, the newest id
committed before them, the users they belong to). The committing process hands it to its
own event feed; other replicas get it as a NOTIFY, which PostgreSQL delivers only when the
transaction commits, in commit order. Each gateway process holds ONE listening connection
(`PgEventSignal`): the notes go to its event feed (eventfeed.py, tails.py), which takes the rows in
and then wakes the users' streams (or, without a feed listening, straight to the streams:
`LocalEventSignal`). The streams' periodic re-read is only a safety net for a lost
listening connection.

A commit sends its NOTIFY only while another replica's listening connection is connected
(`LISTENER_NAME` in pg_stat_activity, read in the commit's last statement): PostgreSQL
signals every listening connection of the database on each NOTIFY, and each then reads the
queue in a transaction of its own, so a replica alone would pay a transaction per commit to
tell only itself. A replica whose listener has just connected takes the log lock once
before it counts as listening: any commit that looked for listeners before it connected has
committed by then, so the feed's next read sees it, and every later commit sees the
listener and notifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import asyncpg

from imagegen.pg_listen import Listening, PgListener

log = logging.getLogger(__name__)

# NOTIFY is scoped to one database: every gateway replica on it shares this channel.
CHANNEL = "gateway_events"

LISTENER_NAME = "imagegen-gateway-listen"
"""The application_name of every replica's listening connection: a commit sends its note
only while some other replica's is connected (projection.py)."""

EVENT_LOG_LOCK = 0x6761_7465_7761_79  # "gateway"
"""Appends to the event log are serialised under this transaction lock (across replicas
too), so that log ids become visible in id order."""


# A note names at most this many bytes of user ids (NOTIFY payloads stop at 8000 bytes);
# a commit for more users says "any user" instead.
NOTE_USERS_MAX_BYTES = 6000


@dataclass(frozen=True, slots=True)
class CommitNote:
    """What one projection commit appended to the event log.

    The rows have ids `lo`..`hi` (taken under the log lock, so in commit order) and
    `prev` is the newest id committed before them: a reader that knows the log up to
    `prev` knows it up to `hi` with these rows. Ids can have gaps (a rolled-back append
    still uses up its ids), which is why the chain is `prev`, not `lo - 1`.
    """

    users: tuple[str, ...] | None
    """The owners of the rows; None: unknown (any user)."""
    prev: int | None = None
    lo: int | None = None
    hi: int | None = None
    token: str | None = None
    """Names the commit for the process that made it (its rows are in its memory)."""

    @property
    def ranged(self) -> bool:
        """Whether the note says which ids it covers (a bare user id does not)."""
        return self.prev is not None and self.lo is not None and self.hi is not None


def note_header(token: str, users: list[str]) -> str:
    """The part of a commit's note known before commit (JSON); SQL adds prev/lo/hi."""
    named: list[str] | None = users
    if len(json.dumps(users)) > NOTE_USERS_MAX_BYTES:
        named = None
    return json.dumps({"t": token, "u": named}, separators=(",", ":"))


def parse_note(payload: str) -> CommitNote:
    """A notification's payload: a commit note, or a bare user id (an older writer)."""
    if payload.startswith("{"):
        try:
            data = json.loads(payload)
            users = data.get("u")
            return CommitNote(
                users=None if users is None else tuple(str(u) for u in users),
                prev=int(data["prev"]),
                lo=int(data["lo"]),
                hi=int(data["hi"]),
                token=str(data["t"]) if data.get("t") is not None else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("event=unreadable_commit_note payload=%.200r", payload)
            return CommitNote(users=None)
    return CommitNote(users=(payload,))


@runtime_checkable
class CommitNotes(Protocol):
    """A source of every commit's note, in commit order, while `epoch` is not None."""

    @property
    def epoch(self) -> int | None:
        """Changes at every (re)connect; None while notes may be missed (not listening)."""
        ...

    def subscribe(self, callback: Callable[[CommitNote], None]) -> None:
        """Hand every note to `callback` (which then wakes the streams itself)."""
        ...

    def unsubscribe(self, callback: Callable[[CommitNote], None]) -> None: ...


class EventSignal(Protocol):
    """Tells waiting streams that a user's event log has grown."""

    def listen(self, user_id: str) -> asyncio.Event:
        """An event set at the next `notify(user_id)`; take it before reading the log."""
        ...

    def notify(self, user_id: str) -> None:
        """Wake every stream that listens for this user."""
        ...


class LocalEventSignal:
    """In-process: one asyncio.Event per user with listeners, replaced at each notify."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def listen(self, user_id: str) -> asyncio.Event:
        event = self._events.get(user_id)
        if event is None:
            event = self._events[user_id] = asyncio.Event()
        return event

    def notify(self, user_id: str) -> None:
        event = self._events.pop(user_id, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        """Wake every stream (after notifications may have been missed)."""
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    @property
    def listening_users(self) -> int:
        return len(self._events)


class PgEventSignal(Listening):
    """LISTENs on one connection per process and wakes this process's streams.

    Use as an async context manager. The connection is (re)opened in the background
    (`PgListener`): while it is down streams fall back to their periodic re-read, and every
    reconnect wakes all streams, since notifications sent meanwhile are lost.
    """

    def __init__(
        self,
        dsn: str,
        *,
        local: LocalEventSignal | None = None,
        reconnect_s: float = 1.0,
        check_s: float = 15.0,
    ) -> None:
        self._local = local or LocalEventSignal()
        self.listener = PgListener(
            dsn,
            CHANNEL,
            self._on_notification,
            application_name=LISTENER_NAME,
            on_live=_after_earlier_appends,
            on_connected=self._local.notify_all,
            reconnect_s=reconnect_s,
            check_s=check_s,
        )
        self._subscribers: list[Callable[[CommitNote], None]] = []
        self.notifications = 0

    def listen(self, user_id: str) -> asyncio.Event:
        return self._local.listen(user_id)

    def notify(self, user_id: str) -> None:
        self._local.notify(user_id)

    @property
    def connected(self) -> bool:
        return self.listener.live

    @property
    def connects(self) -> int:
        return self.listener.connects

    @property
    def epoch(self) -> int | None:
        return self.connects if self.connected else None

    @property
    def listener_pid(self) -> int | None:
        """The server process of this replica's listening connection (None while down)."""
        return self.listener.pid

    def subscribe(self, callback: Callable[[CommitNote], None]) -> None:
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[CommitNote], None]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(callback)

    async def wait_connected(self, timeout: float) -> bool:
        """True once the LISTEN is in place (within `timeout` seconds)."""
        return await self.listener.wait_live(timeout)

    def _on_notification(self, payload: str) -> None:
        self.notifications += 1
        if not payload:
            return
        note = parse_note(payload)
        if self._subscribers:
            for callback in list(self._subscribers):
                callback(note)  # the feed wakes the streams once it has the rows
        elif note.users is None:
            self._local.notify_all()
        else:
            for user in note.users:
                self._local.notify(user)


async def _after_earlier_appends(conn: asyncpg.Connection) -> None:
    """Wait out the appends in progress (they may have looked for listeners before this
    one connected, and so send no note here): take the log lock once, after LISTEN."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENT_LOG_LOCK)
