"""Deferred publishes in the consumer loop, on the in-memory broker: a handler's publishes
are not waited for one by one, the batch's offsets are committed only once all of them are
delivered, and a failed delivery is handled again as if the handler had raised it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest
from pydantic import BaseModel

from imagegen.errors import FatalClientError, PermanentError, RetryableError
from imagegen.kafka import ConsumerLoop, DeferredPublisher, Handler, Record
from imagegen.kafka.deferred import Deliveries, collecting
from imagegen.kafka.memory import InMemoryBroker, InMemoryPublisher

IN, OUT, DLQ, GROUP = "in", "out", "dead-letters", "worker"


class HeldSender:
    """An in-memory publisher whose deliveries are reported only when the test says so."""

    def __init__(self, inner: InMemoryPublisher) -> None:
        self.inner = inner
        self.held: list[tuple[asyncio.Future[None], Callable[[], object]]] = []
        self.awaited = 0

    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.awaited += 1
        await self.inner.publish(topic, key, value, headers)

    async def send(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        report: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append((report, lambda: self.inner.publish(topic, key, value, headers)))
        return report

    async def release(self) -> None:
        held, self.held = self.held, []
        for report, deliver in held:
            await deliver()  # type: ignore[misc]
            report.set_result(None)

    async def close(self) -> None:
        await self.inner.close()


def make_loop(broker: InMemoryBroker, handler: Handler, **kw: object) -> ConsumerLoop:
    return ConsumerLoop(
        name=GROUP,
        consumer=broker.consumer(GROUP, [IN]),
        handlers={IN: handler},
        dead_letters=broker.publisher(),
        dead_letter_topic=DLQ,
        backoff_initial=0.01,
        poll_timeout=0.05,
        **kw,  # type: ignore[arg-type]
    )


async def feed(broker: InMemoryBroker, count: int) -> None:
    publisher = broker.publisher()
    for n in range(count):
        await publisher.publish(IN, "k", f"m{n}".encode())


def committed(broker: InMemoryBroker) -> int:
    return sum(n for (g, t, _), n in broker.committed.items() if (g, t) == (GROUP, IN))


def forwarder(publisher: DeferredPublisher, calls: list[bytes]) -> Handler:
    """Publishes two messages per record, keyed alike: its "image" and its "event"."""

    async def handle(record: Record) -> None:
        calls.append(record.value)
        await publisher.publish(OUT, record.key, record.value + b"-image")
        await publisher.publish(OUT, record.key, record.value + b"-event")

    return handle


async def until(done: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not done():
            await asyncio.sleep(0.01)


async def run_until(loop: ConsumerLoop, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(loop.run())
    try:
        await until(done)
    finally:
        loop.stop()
        await task


def values(broker: InMemoryBroker, topic: str = OUT) -> list[bytes]:
    return [r.value for r in broker.records(topic)]


async def test_handlers_do_not_wait_for_deliveries_and_offsets_wait_for_all_of_them() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 3)
    sender = HeldSender(broker.publisher())
    calls: list[bytes] = []
    loop = make_loop(broker, forwarder(DeferredPublisher(sender), calls))
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: len(sender.held) == 6)  # every handler returned, nothing delivered
        assert calls == [b"m0", b"m1", b"m2"]
        await asyncio.sleep(0.1)
        assert committed(broker) == 0  # not before the deliveries
        await sender.release()
        await until(lambda: committed(broker) == 3)
    finally:
        loop.stop()
        await task
    assert sender.awaited == 0
    assert values(broker) == [
        f"m{n}-{what}".encode() for n in range(3) for what in ("image", "event")
    ]
    assert broker.commits == 1  # the batch's offsets, once


async def test_a_failed_delivery_is_handled_again_with_its_publishes_awaited() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 4)
    publisher = broker.publisher()
    calls: list[bytes] = []
    inner = forwarder(DeferredPublisher(publisher), calls)

    async def handle(record: Record) -> None:
        if record.value == b"m1" and b"m1" not in calls:
            # m1's "image" times out (retryable); its "event" goes out.
            publisher.failures.append(RetryableError("kafka: _MSG_TIMED_OUT: timed out"))
        await inner(record)

    loop = make_loop(broker, handle)
    await run_until(loop, lambda: committed(broker) == 4)
    # m0 is committed with the batch; m1 and what follows it are handled again, in order.
    assert calls == [b"m0", b"m1", b"m2", b"m3", b"m1", b"m2", b"m3"]
    out = values(broker)
    assert out[:2] == [b"m0-image", b"m0-event"]
    assert out.count(b"m1-image") == 1
    # The last copy of each message comes in the records' order.
    last = {v: i for i, v in enumerate(out)}
    assert last[b"m1-image"] < last[b"m1-event"] < last[b"m2-image"] < last[b"m3-event"]
    assert loop.handled == 4
    assert broker.records(DLQ) == []


def failing(
    publisher: InMemoryPublisher, calls: list[bytes], error: Exception, times: int
) -> Handler:
    """`forwarder`, whose first publish for m0 fails with `error` on m0's first `times` calls."""
    inner = forwarder(DeferredPublisher(publisher), calls)

    async def handle(record: Record) -> None:
        if record.value == b"m0" and calls.count(b"m0") < times:
            publisher.failures.append(error)
        await inner(record)

    return handle


async def test_a_delivery_that_keeps_failing_is_retried_before_anything_is_committed() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 2)
    publisher = broker.publisher()
    calls: list[bytes] = []
    handler = failing(publisher, calls, RetryableError("kafka: down"), 3)
    await run_until(make_loop(broker, handler), lambda: committed(broker) == 2)
    # Deferred once, then handled again and retried (awaited) until its publish went out.
    assert calls == [b"m0", b"m1", b"m0", b"m0", b"m0", b"m1"]
    assert values(broker).count(b"m0-image") == 1
    assert values(broker)[-4:] == [b"m0-image", b"m0-event", b"m1-image", b"m1-event"]
    assert broker.records(DLQ) == []


async def test_a_permanently_refused_delivery_dead_letters_its_record() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 2)
    publisher = broker.publisher()
    calls: list[bytes] = []
    too_large = PermanentError("kafka: MSG_SIZE_TOO_LARGE: too large")
    handler = failing(publisher, calls, too_large, 2)  # the deferred try, then the awaited one
    await run_until(make_loop(broker, handler), lambda: committed(broker) == 2)
    assert [r.value for r in broker.records(DLQ)] == [b"m0"]
    assert calls == [b"m0", b"m1", b"m0", b"m1"]
    assert values(broker)[-2:] == [b"m1-image", b"m1-event"]


async def test_a_fatal_delivery_failure_stops_the_loop_and_commits_nothing() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 3)
    publisher = broker.publisher()
    calls: list[bytes] = []
    inner = forwarder(DeferredPublisher(publisher), calls)

    async def handle(record: Record) -> None:
        if record.value == b"m2":
            publisher.failures.append(FatalClientError("kafka: _FATAL: fenced"))
        await inner(record)

    with pytest.raises(FatalClientError):
        await asyncio.wait_for(make_loop(broker, handle).run(), 5)
    assert committed(broker) == 0  # m0 and m1 were delivered, but the batch is not committed
    assert broker.records(DLQ) == []


async def test_a_batch_handlers_publishes_are_deferred_as_one_unit() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 3)
    sender = HeldSender(broker.publisher())
    publisher = DeferredPublisher(sender)
    batches: list[int] = []

    async def one(record: Record) -> None:
        await publisher.publish(OUT, record.key, record.value)

    async def many(records: Sequence[Record]) -> None:
        batches.append(len(records))
        for record in records:
            await publisher.publish(OUT, record.key, record.value)

    loop = make_loop(broker, one, batch_handlers={IN: many})
    task = asyncio.create_task(loop.run())
    try:
        await until(lambda: len(sender.held) == 3)
        assert committed(broker) == 0
        await sender.release()
        await until(lambda: committed(broker) == 3)
    finally:
        loop.stop()
        await task
    assert batches == [3]
    assert values(broker) == [b"m0", b"m1", b"m2"]


async def test_outside_a_loop_the_deferred_publisher_waits_for_the_delivery() -> None:
    broker = InMemoryBroker(partitions=1)
    publisher = broker.publisher()
    publisher.failures.append(RetryableError("kafka: down"))
    with pytest.raises(RetryableError):
        await DeferredPublisher(publisher).publish(OUT, "k", b"x")
    with collecting(None):  # a consumer loop's awaited path says the same
        await DeferredPublisher(publisher).publish(OUT, "k", b"y")
    assert values(broker) == [b"y"]


async def test_a_report_sent_after_settling_is_waited_for_by_its_sender() -> None:
    broker = InMemoryBroker(partitions=1)
    publisher = broker.publisher()
    deliveries = Deliveries()
    assert await deliveries.settle() is None
    publisher.failures.append(RetryableError("kafka: down"))
    with collecting(deliveries), pytest.raises(RetryableError):
        await DeferredPublisher(publisher).publish(OUT, "k", b"late")
