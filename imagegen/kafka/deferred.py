"""Publishing from a handler without waiting for each delivery report.

A handler's publishes through a `DeferredPublisher` are handed to the client and the handler
goes on; the consumer loop collects their delivery reports (`Deliveries`, one per handler
call) and waits for all of them before it commits the offsets of the records they came from.
So offsets still follow durable effects, and the messages of a batch travel together instead
of one acknowledgement round trip after another.

Outside a consumer loop's handler (a relay, a ticker, a test calling a handler directly) the
same publisher waits for each delivery as `Publisher.publish` always does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pydantic import BaseModel

from imagegen.errors import FatalClientError
from imagegen.kafka.ports import Publisher, Sender


class Deliveries:
    """The delivery reports of one handler call (or one batch handler's run)."""

    def __init__(self) -> None:
        self._reports: list[asyncio.Future[None]] = []
        self._settled = False

    def adopt(self, report: asyncio.Future[None]) -> bool:
        """Take `report` to wait for at settling; False once settled (the caller waits)."""
        if self._settled:
            return False
        self._reports.append(report)
        return True

    async def settle(self) -> BaseException | None:
        """Wait for every report; the failure among them (a fatal one first), or None."""
        failures: list[BaseException] = []
        while self._reports:  # a task of the handler may still send while we wait
            reports, self._reports = self._reports, []
            results = await asyncio.gather(*reports, return_exceptions=True)
            failures += [r for r in results if isinstance(r, BaseException)]
        self._settled = True
        fatal = next((f for f in failures if isinstance(f, FatalClientError)), None)
        return fatal or (failures[0] if failures else None)


_PENDING: ContextVar[Deliveries | None] = ContextVar("imagegen_deliveries", default=None)


@contextmanager
def collecting(deliveries: Deliveries | None) -> Iterator[None]:
    """Within: a `DeferredPublisher`'s publishes leave their reports to `deliveries` (None:
    they wait for them). Tasks started within inherit it."""
    token = _PENDING.set(deliveries)
    try:
        yield
    finally:
        _PENDING.reset(token)


class DeferredPublisher:
    """A publisher for handlers: inside a consumer loop's handler it returns once the message
    is queued, and the loop waits for the delivery before committing; elsewhere it waits."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self._sender = inner if isinstance(inner, Sender) else None

    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        pending = _PENDING.get()
        if pending is None or self._sender is None:
            await self.inner.publish(topic, key, value, headers)
            return
        report = await self._sender.send(topic, key, value, headers)
        if not pending.adopt(report):
            await report

    async def close(self) -> None:
        await self.inner.close()
