"""The consumer loop in batches, on the in-memory broker: what is handled together, what is
committed when, and what a failure in the middle of a batch leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from imagegen.errors import FatalClientError, PermanentError
from imagegen.kafka import BatchConsumer, BatchHandler, ConsumerLoop, Handler, Record
from imagegen.kafka.memory import InMemoryBroker

IN, DLQ, GROUP = "in", "dead-letters", "worker"


class Store:
    """An idempotent sink: effects keyed by the record's value, applied once each."""

    def __init__(self) -> None:
        self.applied: list[bytes] = []
        self.batches: list[list[bytes]] = []
        self.calls = 0

    def apply(self, record: Record) -> None:
        self.calls += 1
        if record.value not in self.applied:
            self.applied.append(record.value)


def make_loop(
    broker: InMemoryBroker,
    handler: Handler,
    batch: BatchHandler | None = None,
    *,
    max_batch: int = 100,
) -> ConsumerLoop:
    return ConsumerLoop(
        name=GROUP,
        consumer=broker.consumer(GROUP, [IN]),
        handlers={IN: handler},
        batch_handlers={IN: batch} if batch is not None else None,
        dead_letters=broker.publisher(),
        dead_letter_topic=DLQ,
        backoff_initial=0.01,
        poll_timeout=0.05,
        max_batch=max_batch,
    )


async def feed(broker: InMemoryBroker, count: int, key: Callable[[int], str] = str) -> None:
    publisher = broker.publisher()
    for n in range(count):
        await publisher.publish(IN, key(n), f"m{n}".encode())


def committed(broker: InMemoryBroker) -> int:
    return sum(n for (g, t, _), n in broker.committed.items() if (g, t) == (GROUP, IN))


async def run_until(loop: ConsumerLoop, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(10):
            while not done():
                await asyncio.sleep(0.01)
    finally:
        loop.stop()
        await task


def test_the_fake_and_the_real_consumer_hand_over_batches() -> None:
    from imagegen.kafka.confluent import KafkaConsumer

    assert isinstance(InMemoryBroker().consumer(GROUP, [IN]), BatchConsumer)
    assert all(hasattr(KafkaConsumer, name) for name in ("poll_batch", "commit_batch"))


async def test_records_handed_over_together_are_handled_together_and_committed_once() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 10)
    store = Store()

    async def one(record: Record) -> None:
        store.apply(record)

    async def many(records: Sequence[Record]) -> None:
        store.batches.append([r.value for r in records])
        for record in records:
            store.apply(record)

    await run_until(make_loop(broker, one, many), lambda: committed(broker) == 10)
    assert store.batches == [[f"m{n}".encode() for n in range(10)]]
    assert broker.commits == 1  # one commit request for the batch


async def test_batches_are_capped_at_max_batch() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 7)
    sizes: list[int] = []

    async def many(records: Sequence[Record]) -> None:
        sizes.append(len(records))

    async def one(record: Record) -> None:
        sizes.append(1)

    await run_until(make_loop(broker, one, many, max_batch=3), lambda: committed(broker) == 7)
    assert sizes == [3, 3, 1]
    assert broker.commits == 3


async def test_a_failed_batch_leaves_nothing_and_is_handled_one_by_one() -> None:
    """The batch handler is all or nothing; the poison record is then dead-lettered alone
    and the others land, each once."""
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 5)
    store = Store()

    async def one(record: Record) -> None:
        if record.value == b"m2":
            raise PermanentError("poison")
        store.apply(record)

    async def many(records: Sequence[Record]) -> None:
        staged = Store()
        for record in records:
            await one(record) if record.value == b"m2" else staged.apply(record)
        store.applied.extend(staged.applied)  # reached only when no record raised

    await run_until(make_loop(broker, one, many), lambda: committed(broker) == 5)
    assert store.applied == [b"m0", b"m1", b"m3", b"m4"]
    assert [r.value for r in broker.records(DLQ)] == [b"m2"]


async def test_a_fatal_error_mid_batch_commits_nothing_and_redelivery_is_idempotent() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 6)
    store = Store()
    broken = True

    async def one(record: Record) -> None:
        if broken and record.value == b"m3":
            raise FatalClientError("kafka: _FATAL: fenced")
        store.apply(record)

    with pytest.raises(FatalClientError):
        await asyncio.wait_for(make_loop(broker, one).run(), 5)
    assert store.applied == [b"m0", b"m1", b"m2"]  # handled, and durable...
    assert committed(broker) == 0  # ...but no offset of the batch was committed
    assert broker.records(DLQ) == []

    broken = False  # a fresh process gets every record of the batch again
    await run_until(make_loop(broker, one), lambda: committed(broker) == 6)
    assert store.applied == [f"m{n}".encode() for n in range(6)]  # each once
    assert store.calls == 9  # m0..m2 twice: redelivered, and absorbed


async def test_stopping_mid_batch_commits_only_what_was_handled() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 6)
    store = Store()
    loop: ConsumerLoop

    async def one(record: Record) -> None:
        store.apply(record)
        if record.value == b"m1":
            loop.stop()  # asked to stop while m1 is in flight

    loop = make_loop(broker, one)
    await asyncio.wait_for(loop.run(), 5)
    assert store.applied == [b"m0", b"m1"]
    assert committed(broker) == 2  # m2.. were fetched with the batch, never committed

    await run_until(make_loop(broker, one), lambda: committed(broker) == 6)
    assert store.applied == [f"m{n}".encode() for n in range(6)]


async def test_a_record_given_up_on_while_stopping_commits_nothing_after_it() -> None:
    broker = InMemoryBroker(partitions=1)
    await feed(broker, 4)
    loop: ConsumerLoop
    seen: list[bytes] = []

    async def one(record: Record) -> None:
        seen.append(record.value)
        if record.value == b"m1":
            loop.stop()
            raise RuntimeError("flaky")  # retried, but the loop is stopping: given up

    loop = make_loop(broker, one)
    await asyncio.wait_for(loop.run(), 5)
    assert seen == [b"m0", b"m1"]
    assert committed(broker) == 1  # m0 only
    assert broker.records(DLQ) == []


async def test_each_keys_order_holds_across_partitions_in_batches() -> None:
    broker = InMemoryBroker(partitions=4)
    keys = [f"job-{n % 5}" for n in range(40)]
    publisher = broker.publisher()
    for n, key in enumerate(keys):
        await publisher.publish(IN, key, f"{key}:{n}".encode())
    order: dict[str, list[int]] = {}
    batches: list[int] = []

    async def one(record: Record) -> None:
        key, n = record.value.decode().split(":")
        order.setdefault(key, []).append(int(n))

    async def many(records: Sequence[Record]) -> None:
        batches.append(len(records))
        for record in records:
            await one(record)

    await run_until(make_loop(broker, one, many), lambda: committed(broker) == 40)
    assert batches == [40]
    for key, seen in order.items():
        assert seen == sorted(seen) == [n for n, k in enumerate(keys) if k == key]


async def test_without_a_batch_handler_records_are_handled_singly_but_committed_per_batch() -> None:
    broker = InMemoryBroker(partitions=2)
    await feed(broker, 8)
    handled: list[bytes] = []

    async def one(record: Record) -> None:
        handled.append(record.value)

    await run_until(make_loop(broker, one), lambda: committed(broker) == 8)
    assert sorted(handled) == sorted(f"m{n}".encode() for n in range(8))
    assert broker.commits == 1
