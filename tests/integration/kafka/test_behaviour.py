"""One behaviour suite for the Kafka plumbing, run on the in-memory fake, on Apache Kafka and on
Tansu (the no-JVM fallback of `imagegen up`, kept honest here)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from imagegen.errors import FatalClientError, PermanentError, RetryableError
from imagegen.kafka import Consumer, ConsumerLoop, Publisher, Record, decode
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.kafka.memory import InMemoryBroker
from imagegen.stack.topics import create_topics
from imagegen.telemetry import configure_tracing, tracer
from schemas.deadletter import DeadLetterHeaders
from schemas.topics import TopicNames


class Ping(BaseModel):
    n: int


@dataclass
class Bus:
    publisher: Publisher
    consumer: Callable[[str, list[str]], Consumer]
    topics: TopicNames
    kind: str = "memory"


@pytest.fixture(params=["memory", "kafka", "kafka-threads", "tansu"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """kafka: clients woken through librdkafka's queue pipe (the default); kafka-threads:
    the same clients polling from threads (IMAGEGEN_KAFKA_POLL_WAKEUP=false)."""
    if request.param == "memory":
        broker = InMemoryBroker()
        yield Bus(
            broker.publisher(), broker.consumer, TopicNames(f"m{uuid.uuid4().hex[:8]}"), "memory"
        )
        return
    if request.param.startswith("kafka"):
        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        namespace: str = request.getfixturevalue("topic_namespace")
    else:
        bootstrap = request.getfixturevalue("tansu_bootstrap")
        namespace = f"t{uuid.uuid4().hex[:8]}"
        create_topics(bootstrap, namespace)
    wakeup = request.param != "kafka-threads"
    publisher = KafkaPublisher(bootstrap, "test", wakeup=wakeup)

    def consumer(group: str, topics: list[str]) -> Consumer:
        return KafkaConsumer(bootstrap, f"{namespace}.{group}", topics, wakeup=wakeup)

    yield Bus(publisher, consumer, TopicNames(namespace), request.param.split("-")[0])
    await publisher.close()


async def run_until(loop: ConsumerLoop, done: Callable[[], bool], timeout: float = 30) -> None:
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.02)
    finally:
        loop.stop()
        await task


def make_loop(
    bus: Bus, group: str, handler: Callable[[Record], object], **kw: object
) -> ConsumerLoop:
    async def handle(record: Record) -> None:
        result = handler(record)
        if asyncio.iscoroutine(result):
            await result

    return ConsumerLoop(
        name=group,
        consumer=bus.consumer(group, [bus.topics.requests]),
        handlers={bus.topics.requests: handle},
        dead_letters=bus.publisher,
        dead_letter_topic=bus.topics.dead_letter,
        backoff_initial=0.01,
        **kw,  # type: ignore[arg-type]
    )


async def dead_letters(bus: Bus, expect: int) -> list[Record]:
    got: list[Record] = []
    loop = ConsumerLoop(
        name="dlq-reader",
        consumer=bus.consumer("dlq-reader", [bus.topics.dead_letter]),
        handlers={bus.topics.dead_letter: lambda r: _append(got, r)},
        dead_letters=bus.publisher,
        dead_letter_topic=bus.topics.dead_letter + ".unused",
    )
    await run_until(loop, lambda: len(got) >= expect)
    return got


async def _append(into: list[Record], record: Record) -> None:
    into.append(record)


async def test_round_trip_keeps_key_value_headers_and_trace(bus: Bus) -> None:
    configure_tracing("test")
    seen: list[Record] = []
    with tracer().start_as_current_span("producer") as span:
        await bus.publisher.publish(bus.topics.requests, "user-1", Ping(n=1), {"x-extra": "yes"})
        trace_id = format(span.get_span_context().trace_id, "032x")
    await run_until(make_loop(bus, "g", seen.append), lambda: len(seen) == 1)
    record = seen[0]
    assert record.key == "user-1"
    assert decode(record, Ping) == Ping(n=1)
    assert record.headers["x-extra"] == "yes"
    assert trace_id in record.headers["traceparent"]


async def test_same_key_keeps_order(bus: Bus) -> None:
    for n in range(20):
        await bus.publisher.publish(bus.topics.requests, "k", Ping(n=n))
    seen: list[int] = []
    await run_until(
        make_loop(bus, "g", lambda r: seen.append(decode(r, Ping).n)), lambda: len(seen) == 20
    )
    assert seen == list(range(20))


async def test_uncommitted_message_is_redelivered_committed_is_not(bus: Bus) -> None:
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=1))
    consumer = bus.consumer("g", [bus.topics.requests])
    first = None
    async with asyncio.timeout(30):
        while first is None:
            first = await consumer.poll(0.5)
    await consumer.close()  # crashed before committing

    seen: list[Record] = []
    await run_until(make_loop(bus, "g", seen.append), lambda: len(seen) == 1)
    assert decode(seen[0], Ping).n == 1

    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=2))
    later: list[Record] = []
    await run_until(make_loop(bus, "g", later.append), lambda: len(later) == 1)
    assert [decode(r, Ping).n for r in later] == [2]


async def test_poison_and_permanent_errors_go_to_dead_letter_and_consumer_moves_on(
    bus: Bus,
) -> None:
    await bus.publisher.publish(bus.topics.requests, "k", b"{not json")
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=13))
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=2))
    ok: list[int] = []

    def handle(record: Record) -> None:
        ping = decode(record, Ping)
        if ping.n == 13:
            raise PermanentError("unlucky number")
        ok.append(ping.n)

    await run_until(make_loop(bus, "g", handle), lambda: ok == [2])
    letters = await dead_letters(bus, 2)
    headers = [DeadLetterHeaders.from_headers(r.headers) for r in letters]
    assert {h.error_type for h in headers} == {"PoisonMessageError", "PermanentError"}
    assert all(h.original_topic == bus.topics.requests for h in headers)
    assert letters[0].value == b"{not json"
    assert "unlucky number" in headers[1].error_message


async def test_retryable_error_is_retried_until_it_succeeds(bus: Bus) -> None:
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=1))
    attempts: list[int] = []

    def handle(record: Record) -> None:
        attempts.append(1)
        if len(attempts) < 4:
            raise RetryableError("database down")

    loop = make_loop(bus, "g", handle, max_attempts=2)
    await run_until(loop, lambda: loop.handled == 1)
    assert len(attempts) == 4 and loop.dead_lettered == 0


async def test_unexpected_error_is_dead_lettered_after_max_attempts(bus: Bus) -> None:
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=1))
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=2))
    ok: list[int] = []

    def handle(record: Record) -> None:
        if decode(record, Ping).n == 1:
            raise ValueError("bug")
        ok.append(2)

    loop = make_loop(bus, "g", handle, max_attempts=3)
    await run_until(loop, lambda: ok == [2])
    assert loop.dead_lettered == 1
    [letter] = await dead_letters(bus, 1)
    assert DeadLetterHeaders.from_headers(letter.headers).attempts == 3


async def test_stop_drains_the_in_flight_message_and_commits_it(bus: Bus) -> None:
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=1))
    started = asyncio.Event()
    finished: list[int] = []

    async def slow(record: Record) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(decode(record, Ping).n)

    loop = make_loop(bus, "g", slow)
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(started.wait(), 30)
    loop.stop()
    await asyncio.wait_for(task, 30)
    assert finished == [1]

    # Committed: a new member of the group sees only what came after.
    await assert_the_next_member_gets_only_the_next(bus)


async def test_a_stop_ends_a_poll_that_waits_long_for_records(bus: Bus) -> None:
    """The local stack polls for 10 s at a time (fewer loop turns at rest): a stop must not
    wait that poll out. Here a poll of a minute; on the wake-up pipe the stop ends it at
    once, from a thread within the 2 s piece the thread blocks for."""
    handled: list[int] = []
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=1))
    loop = make_loop(bus, "g", lambda r: handled.append(decode(r, Ping).n), poll_timeout=60.0)
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(30):
        while not handled:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # the next poll is waiting now
    stopped_at = asyncio.get_running_loop().time()
    loop.stop()
    await asyncio.wait_for(task, 30)
    assert asyncio.get_running_loop().time() - stopped_at < 15  # not the minute
    assert handled == [1]
    # Nothing was taken by the interrupted poll: what comes next is the next member's.
    await assert_the_next_member_gets_only_the_next(bus)


async def assert_the_next_member_gets_only_the_next(bus: Bus) -> None:
    """Ping 1 was handled and committed in group "g": a new member gets Ping 2 only."""
    await bus.publisher.publish(bus.topics.requests, "k", Ping(n=2))
    later: list[int] = []
    await run_until(
        make_loop(bus, "g", lambda r: later.append(decode(r, Ping).n)), lambda: len(later) == 1
    )
    assert later == [2]


# --- batches ---------------------------------------------------------------------------------


async def test_records_handed_over_together_are_handled_together_in_order_and_committed(
    bus: Bus,
) -> None:
    for n in range(30):
        await bus.publisher.publish(bus.topics.requests, "one-key", Ping(n=n))
    batches: list[list[int]] = []

    async def one(record: Record) -> None:
        batches.append([decode(record, Ping).n])

    async def many(records: Sequence[Record]) -> None:
        batches.append([decode(r, Ping).n for r in records])

    loop = make_loop(bus, "g", one, batch_handlers={bus.topics.requests: many})
    await run_until(loop, lambda: sum(map(len, batches)) == 30)
    assert [n for batch in batches for n in batch] == list(range(30))  # the key's order
    if bus.kind != "tansu":  # Apache Kafka returns a partition's records in one response
        assert max(map(len, batches)) > 1

    # Committed: a new member of the group sees only what came after.
    await bus.publisher.publish(bus.topics.requests, "one-key", Ping(n=99))
    later: list[int] = []
    await run_until(
        make_loop(bus, "g", lambda r: later.append(decode(r, Ping).n)), lambda: len(later) == 1
    )
    assert later == [99]


async def test_each_keys_order_holds_when_batches_span_partitions(bus: Bus) -> None:
    keys = [f"user-{n % 7}" for n in range(60)]
    for n, key in enumerate(keys):
        await bus.publisher.publish(bus.topics.requests, key, Ping(n=n))
    seen: dict[str, list[int]] = {}

    async def many(records: Sequence[Record]) -> None:
        for record in records:
            assert record.key is not None
            seen.setdefault(record.key, []).append(decode(record, Ping).n)

    async def one(record: Record) -> None:
        await many([record])

    loop = make_loop(bus, "g", one, batch_handlers={bus.topics.requests: many})
    await run_until(loop, lambda: sum(map(len, seen.values())) == 60)
    for key, order in seen.items():
        assert order == [n for n, k in enumerate(keys) if k == key]


async def test_a_failure_mid_batch_commits_none_of_it_and_redelivery_is_idempotent(
    bus: Bus,
) -> None:
    for n in range(12):
        await bus.publisher.publish(bus.topics.requests, "one-key", Ping(n=n))
    applied: set[int] = set()
    calls: list[int] = []
    batches: list[list[int]] = []

    async def idempotent(n: int) -> None:
        calls.append(n)
        applied.add(n)  # the effect, keyed by the message: applying it again changes nothing

    async def breaks_at_7(record: Record) -> None:
        n = decode(record, Ping).n
        if n == 7:
            raise FatalClientError("kafka: _FATAL: fenced")  # the process dies here
        await idempotent(n)

    async def noted(record: Record) -> None:
        await breaks_at_7(record)

    loop = make_loop(bus, "g", noted)
    original_fetch = loop._fetch

    async def fetch() -> list[Record]:
        records = await original_fetch()
        if records:
            batches.append([decode(r, Ping).n for r in records])
        return records

    loop._fetch = fetch  # type: ignore[method-assign]
    with pytest.raises(FatalClientError):
        await asyncio.wait_for(loop.run(), 30)
    failed = next(batch for batch in batches if 7 in batch)
    assert 7 not in applied

    # The next owner gets the failed batch again from its first record: none of it was
    # committed, though what came before 7 was handled (and is absorbed again).
    redelivered: list[int] = []

    async def works(record: Record) -> None:
        redelivered.append(decode(record, Ping).n)
        await idempotent(redelivered[-1])

    await run_until(make_loop(bus, "g", works), lambda: 11 in redelivered)
    assert redelivered == list(range(failed[0], 12))
    assert applied == set(range(12))


# --- periodic commits (the real broker only: the fake commits at once) --------------------


async def _committed(consumer: KafkaConsumer, record: Record) -> int:
    """The group's committed offset of `record`'s partition (-1001: none), from the broker."""
    from confluent_kafka import TopicPartition

    raw = consumer._consumer  # the adapter keeps librdkafka's consumer private
    [found] = await asyncio.to_thread(
        raw.committed, [TopicPartition(record.topic, record.partition)], 10
    )
    offset: int = found.offset
    return offset


async def test_handled_offsets_are_committed_within_the_interval_without_close(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    topics = TopicNames(topic_namespace)
    publisher = KafkaPublisher(kafka_bootstrap, "test")
    consumer = KafkaConsumer(
        kafka_bootstrap, f"{topic_namespace}.g", [topics.requests], commit_interval_ms=200
    )
    try:
        await publisher.publish(topics.requests, "k", Ping(n=1))
        record = None
        async with asyncio.timeout(30):
            while record is None:
                record = await consumer.poll(0.5)
        await consumer.commit(record)  # stored, not yet committed by a request of ours
        async with asyncio.timeout(10):
            while await _committed(consumer, record) != record.offset + 1:
                await consumer.poll(0.1)  # the periodic commit runs beside polls
    finally:
        await consumer.close()
        await publisher.close()


async def test_an_unhandled_record_is_never_committed_by_the_periodic_commit(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    topics = TopicNames(topic_namespace)
    publisher = KafkaPublisher(kafka_bootstrap, "test")
    group = f"{topic_namespace}.g"
    consumer = KafkaConsumer(kafka_bootstrap, group, [topics.requests], commit_interval_ms=100)
    await publisher.publish(topics.requests, "k", Ping(n=1))
    await publisher.publish(topics.requests, "k", Ping(n=2))
    seen: list[Record] = []
    async with asyncio.timeout(30):
        while len(seen) < 2:
            record = await consumer.poll(0.5)
            if record is not None:
                seen.append(record)
    await consumer.commit(seen[0])  # the second is "in flight" when the process goes
    await asyncio.sleep(0.5)  # several commit intervals
    await consumer.close()
    again = KafkaConsumer(kafka_bootstrap, group, [topics.requests], commit_interval_ms=100)
    try:
        redelivered = None
        async with asyncio.timeout(30):
            while redelivered is None:
                redelivered = await again.poll(0.5)
        assert decode(redelivered, Ping).n == 2
    finally:
        await again.close()
        await publisher.close()
