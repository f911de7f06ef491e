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
the benchmark client's, not the measured system's. `Meters` reads them with the broker's
offsets (imagegen.kafka.traffic), pg_stat_database and Redis's command count; `delta`
and `per_image` turn two readings into costs per image.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Self

Feed = Generator[None, bytes, None]
"""Fed the client's bytes with `send` as they pass."""

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

    def __enter__(self) -> Self:
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
        parse: Feed | None,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                if parse is not None:
                    parse.send(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()

    def _client_side(self) -> Feed:
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
        # Attribution, keyed by the connection's `application_name` (each service sets its
        # own): round trips, transactions (a BEGIN, or an implicit one: a simple Query or an
        # extended exchange up to its Sync outside a block) and statements executed by text.
        self.app_round_trips: Counter[str] = Counter()
        self.app_transactions: Counter[str] = Counter()
        self.statements: Counter[tuple[str, str]] = Counter()

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                "round_trips": dict(self.round_trips),
                "simple_queries": dict(self.queries),
                "connections": dict(self.logins),
            }

    def attribution(self) -> dict[str, Any]:
        """Round trips, transactions and statements by application (see `__init__`)."""
        with self._lock:
            statements: dict[str, dict[str, int]] = {}
            for (app, text), n in self.statements.items():
                statements.setdefault(app, {})[text] = n
            return {
                "round_trips": dict(self.app_round_trips),
                "transactions": dict(self.app_transactions),
                "statements": statements,
            }

    def _tally(self, app: str, kind: bytes, body: bytes, state: dict[str, Any]) -> None:
        """Attribute one frontend message of a connection whose application is `app`."""
        names: dict[bytes, str] = state["names"]
        with self._lock:
            if kind in (b"S", b"H", b"Q"):
                self.app_round_trips[app] += 1
            if kind == b"P":  # Parse: name, query text
                name, _, rest = body.partition(b"\x00")
                names[name] = _statement(rest.split(b"\x00", 1)[0])
                state["implicit"] = state["implicit"] or not state["block"]
            elif kind == b"B":  # Bind: portal, statement name
                _portal, _, rest = body.partition(b"\x00")
                text = names.get(rest.split(b"\x00", 1)[0], "?")
                self.statements[(app, text)] += 1
                state["implicit"] = state["implicit"] or not state["block"]
            elif kind == b"S":
                if state["implicit"]:
                    self.app_transactions[app] += 1
                state["implicit"] = False
            elif kind == b"Q":  # may hold several statements: "BEGIN; ...", "...; COMMIT"
                raw = body.split(b"\x00", 1)[0].decode("utf-8", "replace")
                self.statements[(app, _statement(raw.encode()))] += 1
                words = raw.replace(";", " ; ").split()
                first = words[0].upper() if words else ""
                last = words[-2 if words[-1:] == [";"] else -1].upper() if words else ""
                if first in ("BEGIN", "START"):
                    self.app_transactions[app] += 1
                    state["block"] = True
                elif not state["block"]:
                    self.app_transactions[app] += 1
                if last in ("COMMIT", "ROLLBACK", "END", "ABORT"):
                    state["block"] = False

    def _client_side(self) -> Feed:
        buffer = b""

        def need(n: int) -> Feed:
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
            app = (fields.get(b"application_name") or b"?").decode()
            self._count(self.logins, database)
            break
        state: dict[str, Any] = {"names": {}, "block": False, "implicit": False}
        while True:  # typed messages: one byte of type, then a length that counts itself
            yield from need(5)
            kind = buffer[:1]
            (length,) = struct.unpack("!i", buffer[1:5])
            yield from need(1 + length)
            message = take(1 + length)
            self._tally(app, kind, message[5:], state)
            if kind in (b"S", b"H"):
                self._count(self.round_trips, database)
            elif kind == b"Q":
                self._count(self.round_trips, database)
                self._count(self.queries, database)


def _statement(text: bytes) -> str:
    """A statement's text on one line, whitespace collapsed, at most 160 characters."""
    return " ".join(text.decode("utf-8", "replace").split())[:160]


class S3Proxy(_Proxy):
    """Counts HTTP requests by kind."""

    def __init__(self, target: int | str) -> None:
        super().__init__(target)
        self.requests: Counter[str] = Counter()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requests)

    def _client_side(self) -> Feed:
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


# PostgreSQL flushes a backend's counters when it goes idle, within 10 s: a reading of
# pg_stat_database is taken this long after the work it should include.
PG_STATS_SETTLE_S = 11.0


@dataclass
class Reading:
    at: float
    counts: dict[str, float]
    kafka: Any = None  # imagegen.kafka.traffic.Snapshot


@dataclass
class Meters:
    """What one system asks of its servers, read from outside it (see the docstring)."""

    database: str
    pg_stats_dsn: str | None = None
    pg: PostgresProxy | None = None
    s3: S3Proxy | None = None
    bootstrap: str | None = None
    kafka_prefix: str = "imagegen."
    redis_port: int | None = None
    settle_s: float = 60.0
    behind: list[dict[str, int]] = field(default_factory=list)
    """Groups found still behind when the counters were read (see `settle`)."""

    async def read(self) -> Reading:
        counts: dict[str, float] = {}
        if self.pg_stats_dsn is not None:
            xacts = await pg_xacts(self.pg_stats_dsn, self.database)
            counts["pg_transactions"] = xacts["commit"] + xacts["rollback"]
        if self.pg is not None:
            pg = self.pg.counts()
            counts["pg_round_trips"] = pg["round_trips"].get(self.database, 0)
            counts["pg_connections_opened"] = pg["connections"].get(self.database, 0)
        if self.s3 is not None:
            by_kind = self.s3.counts()
            counts["s3_requests"] = sum(by_kind.values())
            counts.update({f"s3_{kind}": n for kind, n in by_kind.items()})
        if self.redis_port is not None:
            counts["redis_commands"] = await _redis_commands(self.redis_port)
        kafka = None
        if self.bootstrap:
            from imagegen.kafka.traffic import snapshot

            kafka = await asyncio.to_thread(snapshot, self.bootstrap, self.kafka_prefix)
        return Reading(time.monotonic(), counts, kafka)

    async def settle(self) -> None:
        """Wait until the counters hold everything done so far (groups committed, PostgreSQL's
        statistics flushed)."""
        started = time.monotonic()
        if self.bootstrap:
            behind = await asyncio.to_thread(self._kafka_settled)
            if behind:
                # Counted as far as it got: a group behind has delivered less than it will.
                print(f"note: consumer groups behind when counted: {behind}")
                self.behind.append(behind)
        if self.pg_stats_dsn is not None:
            await asyncio.sleep(max(0.0, PG_STATS_SETTLE_S - (time.monotonic() - started)))

    def _kafka_settled(self, quiet_s: float = 3.0) -> dict[str, int]:
        """Wait until every group has committed all it is assigned, or nothing has moved for
        `quiet_s` (a group that never catches up does not hold the benchmark for long);
        the groups still behind then, with their lag."""
        from imagegen.kafka.traffic import snapshot

        deadline = time.monotonic() + self.settle_s
        last, still_since = None, time.monotonic()
        while True:
            now = snapshot(self.bootstrap or "", self.kafka_prefix)
            lag = {group: n for group, n in now.lag().items() if n}
            if last is None or (now.ends, now.committed) != (last.ends, last.committed):
                still_since = time.monotonic()
            quiet = time.monotonic() - still_since >= quiet_s
            if (not lag and quiet) or quiet_s * 2 <= time.monotonic() - still_since:
                return lag
            if time.monotonic() > deadline:
                return lag
            last = now
            time.sleep(0.5)


async def _redis_commands(port: int) -> int:
    """Commands the baseline's Redis has processed (INFO stats), less this reading's own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"INFO stats\r\n")
        await writer.drain()
        header = await reader.readline()  # $<length>
        body = await reader.readexactly(int(header[1:].strip()) + 2)
    finally:
        writer.close()
    for line in body.decode().splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("no total_commands_processed in Redis INFO")


def delta(before: Reading, after: Reading) -> dict[str, Any]:
    out: dict[str, Any] = {
        key: value - before.counts.get(key, 0) for key, value in after.counts.items()
    }
    if before.kafka is not None and after.kafka is not None:
        from imagegen.kafka.traffic import traffic

        moved = traffic(before.kafka, after.kafka)
        out["kafka_messages"] = moved.messages
        out["kafka_deliveries"] = moved.deliveries
        out["kafka"] = moved.as_dict()
    out["seconds"] = after.at - before.at
    return out


def per_image(load: dict[str, Any], idle: dict[str, Any], images: int) -> dict[str, Any]:
    """Per stored image over the load window: raw, and less the idle rate over its length."""
    raw: dict[str, float | None] = {}
    net: dict[str, float | None] = {}
    for key, value in load.items():
        if not isinstance(value, int | float) or key == "seconds":
            continue
        rate = idle.get(key, 0) / idle["seconds"] if idle.get("seconds") else 0.0
        raw[key] = round(value / images, 2) if images else None
        net[key] = round((value - rate * load["seconds"]) / images, 2) if images else None
    return {
        "images": images,
        "window_s": round(load["seconds"], 1),
        "per_image": net,
        "per_image_raw": raw,
        "idle_per_s": {
            k: round(v / idle["seconds"], 2)
            for k, v in idle.items()
            if isinstance(v, int | float) and k != "seconds" and idle.get("seconds")
        },
        "kafka_detail": load.get("kafka"),
    }
