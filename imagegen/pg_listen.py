"""LISTEN on one PostgreSQL channel from a connection of its own, reconnecting when it is lost.

PostgreSQL delivers a NOTIFY to every connection listening when the sending transaction
commits; one sent while a listener's connection is down is lost to it. So `on_live` runs
each time the LISTEN is in place again, before `live` turns true (where a user reloads what
it may have missed), and `on_connected` right after (where it wakes its waiters). A
periodic trivial query detects a connection lost silently (no FIN from a dead peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import asyncpg

log = logging.getLogger(__name__)


class PgListener:
    """Use as an async context manager: connects in the background, `live` while listening."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        application_name: str,
        search_path: str | None = None,
        on_live: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        on_connected: Callable[[], None] | None = None,
        reconnect_s: float = 1.0,
        check_s: float = 15.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_notify = on_notify
        self._on_live = on_live
        self._on_connected = on_connected
        self._settings = {"application_name": application_name}
        if search_path is not None:
            self._settings["search_path"] = search_path
        self._reconnect_s = reconnect_s
        self._check_s = check_s
        self._live = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connects = 0
        self.pid: int | None = None
        """The server process of the connection while it is live."""

    @property
    def live(self) -> bool:
        return self._live.is_set()

    async def wait_live(self, timeout: float) -> bool:
        """True once the LISTEN is in place (within `timeout` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._live.wait(), timeout)
        return self.live

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")
        # Best effort: a database slow to answer must not block start-up; users cover the
        # time until the listener is live.
        await self.wait_live(5.0)
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

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if isinstance(payload, str):
            self._on_notify(payload)

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=listener_down channel=%s error=%r", self._channel, exc)
            finally:
                self._live.clear()
            await asyncio.sleep(self._reconnect_s)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._dsn, server_settings=self._settings)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(self._channel, self._notified)
            if self._on_live is not None:
                await self._on_live(conn)
            self.connects += 1
            self.pid = conn.get_server_pid()
            self._live.set()
            log.info("event=listener_connected channel=%s", self._channel)
            if self._on_connected is not None:
                self._on_connected()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self._check_s)
                if not lost.is_set():
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), 5.0)
        finally:
            self._live.clear()
            self.pid = None
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)


class Listening:
    """Base of an object whose async context is its `listener`'s (entered: listening)."""

    listener: PgListener

    async def __aenter__(self) -> Self:
        await self.listener.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.listener.__aexit__(exc_type, exc, tb)
