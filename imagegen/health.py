"""A small HTTP endpoint for worker services: `/healthz`, `/readyz` and `/metrics`.

- `/healthz`: 200 while the process and its event loop answer (the answer is served by
  that loop, so a blocked loop fails the probe by timing out).
- `/readyz`: 200 only when every injected readiness check passes; otherwise 503 with a
  JSON body naming each check and why it failed. Checks run concurrently, each with a
  time limit, so one hung dependency reads as "timeout", not as a hung probe.
- `/metrics`: the Prometheus exposition of the process's metrics.

Plain asyncio streams (one request per connection), so workers need no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.kafka.access import ACCESS
from imagegen.telemetry import METRICS_CONTENT_TYPE, metrics_exposition

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
"""Returns when the dependency is ready; raises (any exception) naming why it is not."""

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class NotReadyError(Exception):
    """A readiness check's own verdict (its message is shown as is)."""


@runtime_checkable
class Pingable(Protocol):
    """Something that can say whether the broker answers."""

    async def ping(self, timeout: float) -> None:
        """Return once the broker answered; raise when it did not within `timeout` s."""
        ...


def database_check(pool: asyncpg.Pool) -> ReadinessCheck:
    async def check() -> None:
        await pool.fetchval("SELECT 1")

    return check


def object_store_check(blobs: BlobStore) -> ReadinessCheck:
    """The bucket answers: a HEAD of a key that needn't exist (absent is fine, an outage isn't)."""

    async def check() -> None:
        await blobs.exists("healthz/probe")

    return check


def broker_check(broker: Pingable, timeout: float = 2.0) -> ReadinessCheck:
    """The broker answers, and has refused none of this process's clients lately: a wrong
    password, an untrusted certificate or a missing ACL is named (imagegen/kafka/access.py),
    rather than read as a broker that does not answer, or not at all."""

    async def check() -> None:
        # A refused login would make the ping wait out its timeout: say why at once.
        if (denied := ACCESS.problem(connecting=True)) is not None:
            raise NotReadyError(str(denied))
        try:
            await broker.ping(timeout)  # a ping that gets through clears login problems
        except Exception:
            if (denied := ACCESS.problem()) is not None:
                raise NotReadyError(str(denied)) from None
            raise
        if (denied := ACCESS.problem()) is not None:  # a missing ACL
            raise NotReadyError(str(denied))

    return check


class ReadyFlag:
    """A readiness check that passes once `set()` (e.g. after a model has loaded)."""

    def __init__(self, waiting: str = "not yet") -> None:
        self._ready = False
        self._waiting = waiting

    def set(self) -> None:
        self._ready = True

    async def __call__(self) -> None:
        if not self._ready:
            raise NotReadyError(self._waiting)


class Running(Protocol):
    """A consumer loop, seen from the probe."""

    name: str

    @property
    def stopping(self) -> bool:
        """True once asked to stop."""
        ...


def loops_check(loops: Sequence[Running]) -> ReadinessCheck:
    """Ready while no consumer loop is stopping (a draining pod takes no new work)."""

    async def check() -> None:
        stopped = [lp.name for lp in loops if lp.stopping]
        if stopped:
            raise NotReadyError(f"stopping: {', '.join(stopped)}")

    return check


async def readiness(
    checks: Mapping[str, ReadinessCheck], timeout: float
) -> tuple[bool, dict[str, str]]:
    """Run every check at once; (all ok, {name: "ok" | why not})."""

    async def one(check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            return f"timeout after {timeout:g}s"
        except NotReadyError as exc:
            return str(exc)
        except Exception as exc:
            return f"unavailable: {type(exc).__name__}: {exc}"[:300]
        return "ok"

    names = list(checks)
    results = await asyncio.gather(*(one(checks[n]) for n in names))
    verdicts = dict(zip(names, results, strict=True))
    return all(v == "ok" for v in verdicts.values()), verdicts


class HealthServer:
    """Serves the three endpoints on `host:port` (port 0: any free one, see `.port`)."""

    def __init__(
        self,
        port: int,
        checks: Mapping[str, ReadinessCheck],
        *,
        host: str = "0.0.0.0",  # noqa: S104 - probes and scrapers come from outside the pod
        check_timeout_s: float = 2.0,
        metrics: Callable[[], bytes] = metrics_exposition,
    ) -> None:
        self._host = host
        self._port = port
        self.checks = dict(checks)
        self._timeout = check_timeout_s
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    def watch(self, name: str, check: ReadinessCheck) -> None:
        """Add a readiness check (resources open after the server starts)."""
        self.checks[name] = check

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("event=health_server_started port=%d", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request (no I/O: testable alone)."""
        path = path.split("?", 1)[0]
        if path not in ("/healthz", "/readyz", "/metrics"):
            return 404, "text/plain", b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return 200, "application/json", b'{"status": "ok"}'
        if path == "/metrics":
            body = await asyncio.to_thread(self._metrics)
            return 200, METRICS_CONTENT_TYPE, body
        ready, verdicts = await readiness(self.checks, self._timeout)
        body = json.dumps(
            {
                "status": "ready" if ready else "not ready",
                "checks": verdicts,
                "not_ready": [name for name, v in verdicts.items() if v != "ok"],
            }
        ).encode()
        return (200 if ready else 503), "application/json", body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n"):
                if not line:
                    break
            parts = request_line.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1]
            status, content_type, body = await self.respond(method, path)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        except Exception:
            log.exception("event=health_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
