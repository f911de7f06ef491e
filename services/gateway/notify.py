"""Wake-ups for event streams when the projection commits new events, on every replica.

A stream reads the event log, then waits on its user's signal before reading again.
The projection calls `announce` inside its transaction: PostgreSQL delivers a NOTIFY only
when the transaction commits, so a woken stream always finds the new rows. Each gateway
process holds ONE listening connection (`PgEventSignal`) and fans notifications out in
memory to its streams (`LocalEventSignal`); the streams' periodic re-read is only a
safety net for a lost listening connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Protocol, Self

import asyncpg

log = logging.getLogger(__name__)

# NOTIFY is scoped to one database: every gateway replica on it shares this channel.
CHANNEL = "gateway_events"


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


async def announce(conn: asyncpg.Connection, user_id: str) -> None:
    """Inside the committing transaction: wake `user_id`'s streams on every replica.

    PostgreSQL sends it at commit (never for a rollback) and folds duplicates within one
    transaction, so calling it once per appended event costs nothing extra.
    """
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, user_id)


class PgEventSignal:
    """LISTENs on one connection per process and wakes this process's streams.

    Use as an async context manager. The connection is (re)opened in the background:
    while it is down streams fall back to their periodic re-read, and every reconnect
    wakes all streams, since notifications sent meanwhile are lost.
    """

    def __init__(
        self,
        dsn: str,
        *,
        local: LocalEventSignal | None = None,
        reconnect_s: float = 1.0,
        check_s: float = 15.0,
    ) -> None:
        self._dsn = dsn
        self._local = local or LocalEventSignal()
        self._reconnect_s = reconnect_s
        self._check_s = check_s
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.notifications = 0
        self.connects = 0

    def listen(self, user_id: str) -> asyncio.Event:
        return self._local.listen(user_id)

    def notify(self, user_id: str) -> None:
        self._local.notify(user_id)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> bool:
        """True once the LISTEN is in place (within `timeout` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self.connected

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="gateway-event-listener")
        # Best effort: a database that is slow to answer must not block start-up, the
        # streams' re-read covers the gap until the listener connects.
        await self.wait_connected(5.0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.notifications += 1
        if isinstance(payload, str) and payload:
            self._local.notify(payload)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=event_listener_down error=%r", exc)
            finally:
                self._connected.clear()
            await asyncio.sleep(self._reconnect_s)

    async def _listen_once(self) -> None:
        """LISTEN on a fresh connection until it ends; a periodic query detects a silent loss."""
        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": "imagegen-gateway-listen"}
        )
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notification)
            self.connects += 1
            self._connected.set()
            log.info("event=event_listener_connected channel=%s", CHANNEL)
            self._local.notify_all()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self._check_s)
                if not lost.is_set():
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), 5.0)
        finally:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
