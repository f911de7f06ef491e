"""The interfaces every service codes against; the real broker and the fake both implement them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel


@dataclass(frozen=True)
class Record:
    """One consumed message."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)
    # The adapter's own message object, kept for committing; opaque to handlers.
    native: Any = field(default=None, compare=False, repr=False)
    timestamp: float | None = field(default=None, compare=False)
    """Epoch seconds the broker recorded for the message (producer create time), if any."""


Handler = Callable[[Record], Awaitable[None]]

BatchHandler = Callable[[Sequence[Record]], Awaitable[None]]
"""Handles records of one topic together, in order, all or nothing (one transaction): when
it raises, none of its effects stay and the loop handles the records one by one instead."""


class Publisher(Protocol):
    """Publishes messages; `publish` returns once the broker has the message durably (a
    `DeferredPublisher` inside a consumer loop's handler: once it is queued, and the loop
    waits for its delivery before committing)."""

    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send one message and wait for its acknowledgement."""
        ...

    async def close(self) -> None:
        """Flush what is pending and release the client."""
        ...


@runtime_checkable
class Sender(Publisher, Protocol):
    """A publisher that can hand a message over without waiting for its delivery report."""

    async def send(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """Queue one message; the future settles with its delivery report (an error fails it).
        Messages sent one after another keep their order per partition."""
        ...


class Consumer(Protocol):
    """A consumer-group member that never commits on its own."""

    async def poll(self, timeout: float) -> Record | None:
        """The next record, or None when none arrived within `timeout` seconds."""
        ...

    async def commit(self, record: Record) -> None:
        """Mark `record` (and everything before it in its partition) as handled: committed
        now, or by the adapter's next periodic commit (and on rebalance or close)."""
        ...

    async def close(self) -> None:
        """Leave the group without committing anything further."""
        ...


@runtime_checkable
class Interruptible(Protocol):
    """A consumer whose poll in flight can be ended early (`ConsumerLoop.stop` asks)."""

    def interrupt(self) -> None:
        """End the poll in flight, or the next one if none is: it returns at once with what
        it has, maybe nothing. So a loop's stop needs no short poll timeout."""
        ...


def interrupt_poll(consumer: object) -> None:
    """`interrupt` the consumer's poll where it can be; a no-op for one that cannot."""
    if isinstance(consumer, Interruptible):
        consumer.interrupt()


@runtime_checkable
class BatchConsumer(Consumer, Protocol):
    """A consumer that hands over what the broker delivered together, and commits it at once."""

    async def poll_batch(self, max_records: int, timeout: float) -> list[Record]:
        """Up to `max_records` records in delivery order (each partition's in offset order):
        waits up to `timeout` seconds for the first, then takes only what has arrived."""
        ...

    async def commit_batch(self, records: Sequence[Record]) -> None:
        """`commit` each of `records` (at most one per partition), in one request where the
        adapter commits synchronously."""
        ...
