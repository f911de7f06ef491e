"""Several consumer lanes over one consumer: N records of a consumer handled at once.

`ConsumerLoop` handles one record at a time and commits it when its handler returns. A
service that waits on I/O per record (storage: S3 copies and a database row) or has cores
to spare (postprocess: renditions in threads) runs N such loops ("lanes") over one shared
consumer: each lane keeps the loop's guarantees for its record (retry, dead-letter, commit
after the effects are durable). The generator's lanes meet in its `MicroBatcher`, so that
several images can wait to be batched.

Records of one partition are handled concurrently, so lanes suit handlers whose records
are independent of each other's order (each is one image, idempotent by its id). A topic
whose handling depends on partition order is named `ordered`: a lane that polls one of
its records waits until the record before it in its partition is done (the other lanes
go on with other records), so one consumer serves both kinds (storage: images on lanes,
its requests in order).

Offsets: Kafka commits a position, i.e. everything before it in the partition. Lanes
finish out of order, so `SharedConsumer` commits a record only once every record before it
in its partition (delivered to any lane) is done - never past an image still in flight.
A record a lane gives up on (stopping mid-retry) is never committed, nor is anything after
it in that partition: all of it is redelivered, and the idempotent consumers downstream
absorb the duplicates.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from imagegen.kafka import ConsumerLoop
from imagegen.kafka.ports import Consumer, Handler, Publisher, Record, interrupt_poll

_Partition = tuple[str, int]


class SharedConsumer:
    """One consumer behind several lanes: polls one at a time, commits in order, closes once."""

    def __init__(self, inner: Consumer, lanes: int, ordered: frozenset[str] = frozenset()) -> None:
        self._inner = inner
        self._open = lanes
        self._ordered = ordered
        # Per partition of an ordered topic: settled when its latest polled record is done.
        self._last: dict[_Partition, asyncio.Future[None]] = {}
        self._turns: dict[tuple[str, int, int], asyncio.Future[None]] = {}
        self._stopped = asyncio.Event()
        self._poll_lock = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._in_flight: dict[_Partition, deque[int]] = {}
        self._done: dict[_Partition, dict[int, Record]] = {}
        self._to_commit: dict[_Partition, Record] = {}

    def lane(self) -> Consumer:
        return _Lane(self)

    def stop(self) -> None:
        """Release lanes waiting for their turn: their records stay unhandled (uncommitted).
        Each lane's own stop interrupts the poll in flight (`_Lane.interrupt`)."""
        self._stopped.set()

    def interrupt(self) -> None:
        interrupt_poll(self._inner)

    async def poll(self, timeout: float) -> Record | None:
        async with self._poll_lock:
            if self._stopped.is_set():
                # Lanes queue here behind the one poll in flight: once the lanes stop, none
                # starts another. Each would wait out its whole timeout on a consumer that
                # gets nothing (a fenced one gets nothing ever) - 8 storage lanes took 16 s
                # to stop after a broker restart before their consumer could be replaced.
                return None
            record = await self._inner.poll(timeout)
            if record is None:
                return None
            # Noted under the lock: delivery order is partition order.
            where = (record.topic, record.partition)
            self._in_flight.setdefault(where, deque()).append(record.offset)
            if record.topic not in self._ordered:
                return record
            before = self._last.get(where)
            turn = asyncio.get_running_loop().create_future()
            self._last[where] = self._turns[(*where, record.offset)] = turn
        if before is not None and not before.done() and not await self._wait(before):
            return None  # stopping: never handled, so neither it nor what follows commits
        return record

    async def _wait(self, before: asyncio.Future[None]) -> bool:
        """Wait for the record before; False when the lanes stop first."""
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stopped.wait())
        waiting: set[asyncio.Future[Any]] = {before, stopped}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        return before.done()

    async def commit(self, record: Record) -> None:
        where = (record.topic, record.partition)
        turn = self._turns.pop((*where, record.offset), None)
        if turn is not None:
            if not turn.done():
                turn.set_result(None)
            if self._last.get(where) is turn:
                del self._last[where]
        done = self._done.setdefault(where, {})
        done[record.offset] = record
        in_flight = self._in_flight.get(where, deque())
        while in_flight and in_flight[0] in done:
            self._to_commit[where] = done.pop(in_flight.popleft())
        async with self._commit_lock:
            target = self._to_commit.get(where)
            if target is None:
                return
            # A failure leaves `target` pending: the loop retries this commit, which resends it.
            await self._inner.commit(target)
            if self._to_commit.get(where) is target:
                del self._to_commit[where]

    async def close(self) -> None:
        self._open -= 1
        if self._open == 0:
            await self._inner.close()


class _Lane:
    """What one lane's `ConsumerLoop` sees of the shared consumer."""

    def __init__(self, shared: SharedConsumer) -> None:
        self._shared = shared
        self._closed = False

    async def poll(self, timeout: float) -> Record | None:
        return await self._shared.poll(timeout)

    def interrupt(self) -> None:
        self._shared.interrupt()

    async def commit(self, record: Record) -> None:
        await self._shared.commit(record)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._shared.close()


class LaneGroup(ConsumerLoop):
    """The first lane, which also runs (and stops) the other lanes beside itself."""

    def __init__(
        self,
        others: list[ConsumerLoop],
        *,
        name: str,
        consumer: Consumer,
        handlers: dict[str, Handler],
        dead_letters: Publisher,
        dead_letter_topic: str,
        backoff_initial: float,
        poll_timeout: float,
        shared: SharedConsumer | None = None,
    ) -> None:
        self._shared = shared
        super().__init__(
            name=name,
            consumer=consumer,
            handlers=handlers,
            dead_letters=dead_letters,
            dead_letter_topic=dead_letter_topic,
            backoff_initial=backoff_initial,
            poll_timeout=poll_timeout,
        )
        self.others = others

    def stop(self) -> None:
        super().stop()
        if self._shared is not None:
            self._shared.stop()
        for lane in self.others:
            lane.stop()

    async def run(self) -> None:
        """Run every lane; if one dies, the others drain their record and stop, and then its
        error is raised (no lane is left running unawaited)."""
        tasks = [
            asyncio.create_task(super().run()),
            *(asyncio.create_task(lp.run()) for lp in self.others),
        ]
        try:
            _, running = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if running:
            self.stop()
            await asyncio.wait(running)
        errors = [t.exception() for t in tasks if not t.cancelled()]
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            raise first

    @property
    def lanes(self) -> list[ConsumerLoop]:
        return [self, *self.others]


def laned_loop(
    name: str,
    consumer: Consumer,
    handlers: dict[str, Handler],
    lanes: int,
    *,
    dead_letters: Publisher,
    dead_letter_topic: str,
    backoff_initial: float = 0.2,
    poll_timeout: float = 0.5,
    ordered: frozenset[str] = frozenset(),
) -> LaneGroup:
    """`lanes` consumer loops over `consumer`, run and stopped as one; the records of each
    partition of an `ordered` topic are handled one after another."""
    shared = SharedConsumer(consumer, lanes, ordered)

    def options(index: int) -> dict[str, Any]:
        return {
            "name": name if index == 0 else f"{name}-lane{index}",
            "consumer": shared.lane(),
            "handlers": handlers,
            "dead_letters": dead_letters,
            "dead_letter_topic": dead_letter_topic,
            "backoff_initial": backoff_initial,
            "poll_timeout": poll_timeout,
        }

    # Every lane's dead letters name the group (the first lane's name), not the lane.
    others = [ConsumerLoop(**options(index), group=name) for index in range(1, lanes)]
    return LaneGroup(others, **options(0), shared=shared)
