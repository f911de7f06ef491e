"""An in-memory broker with the same interfaces as the real one, for unit tests.

It keeps Kafka's semantics that handlers depend on: per-key partition order,
consumer groups that resume from their committed offsets, redelivery of what was
not committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence

from pydantic import BaseModel

from imagegen.kafka.codec import encode
from imagegen.kafka.ports import Record
from imagegen.telemetry import inject_trace_headers


class InMemoryBroker:
    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.topics: dict[str, list[list[Record]]] = {}
        self.committed: dict[tuple[str, str, int], int] = defaultdict(int)
        self.commits = 0
        """Commit requests made (a batch's commit counts once), for assertions."""
        self.reachable = True
        """Tests set False to play a broker that does not answer."""
        self._changed = asyncio.Condition()

    def _topic(self, name: str) -> list[list[Record]]:
        return self.topics.setdefault(name, [[] for _ in range(self.partitions)])

    async def append(
        self, topic: str, key: str | None, value: bytes, headers: dict[str, str]
    ) -> None:
        parts = self._topic(topic)
        index = zlib.crc32(key.encode()) % len(parts) if key is not None else 0
        part = parts[index]
        part.append(Record(topic, index, len(part), key, value, headers, timestamp=time.time()))
        async with self._changed:
            self._changed.notify_all()

    def records(self, topic: str) -> list[Record]:
        """Every record of a topic, partition by partition (for assertions)."""
        return [r for part in self._topic(topic) for r in part]

    def publisher(self) -> InMemoryPublisher:
        return InMemoryPublisher(self)

    def consumer(self, group_id: str, topics: list[str]) -> InMemoryConsumer:
        return InMemoryConsumer(self, group_id, topics)

    async def wait_for_change(self, timeout: float) -> None:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)

    async def _wake_all(self) -> None:
        async with self._changed:
            self._changed.notify_all()


class InMemoryPublisher:
    def __init__(self, broker: InMemoryBroker) -> None:
        self._broker = broker
        self.closed = False
        self.failures: list[Exception] = []
        """Tests queue errors here: each of the next deliveries fails with the next one (the
        message is not appended), as a broker that refuses or times out a message."""

    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        await (await self.send(topic, key, value, headers))

    async def send(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        if self.closed:
            raise RuntimeError("publisher is closed")
        report: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures:
            report.set_exception(self.failures.pop(0))
            return report
        all_headers = inject_trace_headers(dict(headers or {}))
        await self._broker.append(topic, key, encode(value), all_headers)
        report.set_result(None)
        return report

    async def ping(self, timeout: float) -> None:
        if not self._broker.reachable:
            raise ConnectionError("in-memory broker marked unreachable")

    async def close(self) -> None:
        self.closed = True


class InMemoryConsumer:
    """One member per group is enough for unit tests: it is assigned every partition."""

    def __init__(self, broker: InMemoryBroker, group_id: str, topics: list[str]) -> None:
        self._broker = broker
        self._group = group_id
        self._topics = topics
        self._positions: dict[tuple[str, int], int] = {}
        self._interrupted = False
        self._wakes: set[asyncio.Task[None]] = set()

    def interrupt(self) -> None:
        """End the poll in flight (or the next), as the Kafka adapter's does."""
        self._interrupted = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop running: no poll waits, and the next one sees the flag
        wake = loop.create_task(self._broker._wake_all())
        self._wakes.add(wake)
        wake.add_done_callback(self._wakes.discard)

    def _next(self) -> Record | None:
        for topic in self._topics:
            for index, part in enumerate(self._broker._topic(topic)):
                pos = self._positions.get(
                    (topic, index), self._broker.committed[(self._group, topic, index)]
                )
                if pos < len(part):
                    self._positions[(topic, index)] = pos + 1
                    return part[pos]
        return None

    async def poll(self, timeout: float) -> Record | None:
        deadline = time.monotonic() + timeout
        while (record := self._next()) is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._interrupted:
                break
            await self._broker.wait_for_change(left)
        self._interrupted = False
        return record

    async def poll_batch(self, max_records: int, timeout: float) -> list[Record]:
        first = await self.poll(timeout)
        if first is None:
            return []
        batch = [first]
        while len(batch) < max_records and (record := self._next()) is not None:
            batch.append(record)
        return batch

    async def commit(self, record: Record) -> None:
        key = (self._group, record.topic, record.partition)
        self._broker.committed[key] = max(self._broker.committed[key], record.offset + 1)
        self._broker.commits += 1

    async def commit_batch(self, records: Sequence[Record]) -> None:
        for record in records:
            key = (self._group, record.topic, record.partition)
            self._broker.committed[key] = max(self._broker.committed[key], record.offset + 1)
        self._broker.commits += 1

    async def close(self) -> None:
        self._positions.clear()
