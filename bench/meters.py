"""Counting what a system asks of its servers, from the outside: loopback TCP proxies in
front of PostgreSQL and S3, and PostgreSQL's own transaction counters.

The benchmark points the system under test at a proxy instead of the server; the proxy
forwards bytes both ways untouched and reads the client's side as it passes:

- PostgreSQL: a round trip is a frontend message the client then waits on: a `Sync` (the
  end of an extended-query exchange: execute, executemany's whole pipeline), a `Flush`
  (asyncpg's prepare: Parse and Describe, then Flush, and it waits for the description)
  or a simple `Query` (BEGIN, COMMIT, asyncpg's reset query). Counted per database, from each
  connection's startup message, so two systems on one server are told apart.
- S3 (HTTP/1.1): one count per request, by kind (PUT, COPY = a PUT with
  `x-amz-copy-source`, GET, HEAD, DELETE, POST, LIST = a GET on a bucket).

Each proxy runs its own event loop in a thread of the benchmark process: its CPU shows as
the benchmark client's, not the measured system's.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


class _Proxy:
    """Forwards every connection on a free loopback port to `target` (a loopback port, or a
    Unix socket's path); `_client_side` reads (a copy of) what the client sends."""

    def __init__(self, target: int | str) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=type(self).__name__)
        self._server: asyncio.Server | None = None
        self.connections = 0

    def __enter__(self) -> _Proxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.target, str):
                server_r, server_w = await asyncio.open_unix_connection(self.target)
            else:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_w.close()
            return
        with self._lock:
            self.connections += 1
        parse = self._client_side()
        next(parse)
        up = asyncio.ensure_future(self._pipe(client_r, server_w, parse))
        down = asyncio.ensure_future(self._pipe(server_r, client_w, None))
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parse: Any,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                if parse is not None:
                    parse.send(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()

    def _client_side(self) -> Any:
        """A generator fed the client's bytes as they pass (`send`)."""
        raise NotImplementedError

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1


class PostgresProxy(_Proxy):
    """Counts round trips (Sync, Flush and Query messages) and connections per database."""

    def __init__(self, target: int | str) -> None:
        super().__init__(target)
        self.round_trips: Counter[str] = Counter()
        self.queries: Counter[str] = Counter()  # of which simple Query messages
        self.logins: Counter[str] = Counter()

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                "round_trips": dict(self.round_trips),
                "simple_queries": dict(self.queries),
                "connections": dict(self.logins),
            }

    def _client_side(self) -> Any:
        buffer = b""

        def need(n: int) -> Iterator[None]:
            nonlocal buffer
            while len(buffer) < n:
                buffer += yield

        def take(n: int) -> bytes:
            nonlocal buffer
            out, buffer = buffer[:n], buffer[n:]
            return out

        # Startup: untyped messages (length, code) until the StartupMessage itself.
        database = "?"
        while True:
            yield from need(8)
            length, code = struct.unpack("!ii", buffer[:8])
            yield from need(length)
            body = take(length)
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                continue  # refused by the benchmark's server (no TLS): startup follows
            if code == _CANCEL_REQUEST:
                while True:
                    yield
            params = body[8:].split(b"\x00")
            fields = dict(zip(params[0::2], params[1::2], strict=False))
            database = (fields.get(b"database") or fields.get(b"user") or b"?").decode()
            self._count(self.logins, database)
            break
        while True:  # typed messages: one byte of type, then a length that counts itself
            yield from need(5)
            kind = buffer[:1]
            (length,) = struct.unpack("!i", buffer[1:5])
            yield from need(1 + length)
            take(1 + length)
            if kind in (b"S", b"H"):
                self._count(self.round_trips, database)
            elif kind == b"Q":
                self._count(self.round_trips, database)
                self._count(self.queries, database)


class S3Proxy(_Proxy):
    """Counts HTTP requests by kind."""

    def __init__(self, target: int | str) -> None:
        super().__init__(target)
        self.requests: Counter[str] = Counter()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requests)

    def _client_side(self) -> Any:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                buffer += yield
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target = [*lines[0].split(" "), "", ""][:2]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self._count(self.requests, _s3_kind(method, target, headers))
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:  # chunk-size line, data, CRLF; a zero size ends it (no trailers)
                    while b"\r\n" not in buffer:
                        buffer += yield
                    size_line, buffer = buffer.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    while len(buffer) < size + 2:
                        buffer += yield
                    buffer = buffer[size + 2 :]
                    if size == 0:
                        break
            else:
                remaining = int(headers.get("content-length", "0") or 0)
                while len(buffer) < remaining:
                    remaining -= len(buffer)
                    buffer = yield
                buffer = buffer[remaining:]


def _s3_kind(method: str, target: str, headers: dict[str, str]) -> str:
    path = target.split("?", 1)[0].strip("/")
    if method == "PUT" and "x-amz-copy-source" in headers:
        return "COPY"
    if method == "GET" and "/" not in path:
        return "LIST"
    return method or "?"


def subtract(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """`after - before` for (nested) counters; keys missing before count from 0."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = subtract(value, before.get(key, {}))
        else:
            out[key] = value - before.get(key, 0)
    return out


async def pg_xacts(dsn: str, database: str) -> dict[str, int]:
    """pg_stat_database's committed and rolled-back transactions of `database`."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
            database,
        )
    finally:
        await conn.close()
    if row is None:
        raise RuntimeError(f"no database {database!r} in pg_stat_database")
    return {"commit": int(row["xact_commit"]), "rollback": int(row["xact_rollback"])}


def per(count: float, images: int) -> float | None:
    return round(count / images, 1) if images else None
