"""A broken Kafka client stops the consumer loop and the process; it never dead-letters."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imagegen.errors import FatalClientError, PermanentError
from imagegen.kafka import Consumer, ConsumerLoop, Handler, Publisher, Record
from imagegen.kafka.memory import InMemoryBroker
from imagegen.runtime import run_until_signalled
from tests.unit.kafka.fakes import FENCED, BrokenPublisher

IN, DLQ = "in", "dead-letters"
ROOT = Path(__file__).resolve().parents[3]


class FatalCommits:
    """A consumer that delivers, but whose commits fail with a fatal error."""

    def __init__(self, inner: Consumer) -> None:
        self._inner = inner

    async def poll(self, timeout: float) -> Record | None:
        return await self._inner.poll(timeout)

    async def commit(self, record: Record) -> None:
        raise FatalClientError("kafka: _FATAL: Fatal error: fenced")

    async def close(self) -> None:
        await self._inner.close()


def make_loop(
    broker: InMemoryBroker,
    handler: Handler,
    dead_letters: Publisher,
    *,
    consumer: Consumer | None = None,
    name: str = "worker",
    topic: str = IN,
) -> ConsumerLoop:
    return ConsumerLoop(
        name=name,
        consumer=consumer or broker.consumer(name, [topic]),
        handlers={topic: handler},
        dead_letters=dead_letters,
        dead_letter_topic=DLQ,
        backoff_initial=0.01,
        poll_timeout=0.05,
    )


async def feed(broker: InMemoryBroker, *values: bytes, topic: str = IN) -> None:
    for value in values:
        await broker.publisher().publish(topic, "k", value)


def committed(broker: InMemoryBroker, group: str = "worker", topic: str = IN) -> int:
    return sum(n for (g, t, _), n in broker.committed.items() if (g, t) == (group, topic))


async def test_fatal_error_from_the_handler_stops_the_loop_uncommitted_not_dead_lettered() -> None:
    broker = InMemoryBroker()
    await feed(broker, b"good")
    broken = BrokenPublisher()

    async def handle(record: Record) -> None:
        await broken.publish("out", record.key, record.value)  # the handler's own publish

    loop = make_loop(broker, handle, broker.publisher())
    with pytest.raises(FatalClientError, match="PRODUCER_FENCED"):
        await asyncio.wait_for(loop.run(), 5)
    assert broken.attempts == 1  # not retried: retrying cannot mend the client
    assert broker.records(DLQ) == []
    assert committed(broker) == 0
    assert loop.handled == 0 and loop.dead_lettered == 0


async def test_fatal_error_from_the_dead_letter_publish_leaves_the_record_uncommitted() -> None:
    broker = InMemoryBroker()
    await feed(broker, b"bad")
    dead_letters = BrokenPublisher()

    async def handle(record: Record) -> None:
        raise PermanentError("a bad message, to be dead-lettered")

    loop = make_loop(broker, handle, dead_letters)
    with pytest.raises(FatalClientError):
        await asyncio.wait_for(loop.run(), 5)
    assert dead_letters.attempts == 1  # not retried like a RetryableError
    assert committed(broker) == 0 and loop.dead_lettered == 0


async def test_fatal_error_from_the_dead_letter_publish_of_an_unhandled_topic() -> None:
    broker = InMemoryBroker()
    await feed(broker, b"stray", topic="stray")

    async def handle(record: Record) -> None:
        raise AssertionError("not this topic's handler")

    loop = ConsumerLoop(
        name="worker",
        consumer=broker.consumer("worker", [IN, "stray"]),
        handlers={IN: handle},
        dead_letters=BrokenPublisher(),
        dead_letter_topic=DLQ,
        poll_timeout=0.05,
    )
    with pytest.raises(FatalClientError):
        await asyncio.wait_for(loop.run(), 5)
    assert committed(broker, topic="stray") == 0


async def test_fatal_error_from_the_commit_ends_the_loop_without_dead_lettering() -> None:
    broker = InMemoryBroker()
    await feed(broker, b"good")
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        handled.append(record.value)

    consumer = FatalCommits(broker.consumer("worker", [IN]))
    loop = make_loop(broker, handle, broker.publisher(), consumer=consumer)
    with pytest.raises(FatalClientError):
        await asyncio.wait_for(loop.run(), 5)
    assert handled == [b"good"]
    assert broker.records(DLQ) == [] and committed(broker) == 0


async def test_a_fresh_process_gets_the_record_the_broken_one_left() -> None:
    broker = InMemoryBroker()
    await feed(broker, b"one", b"two")
    broken = BrokenPublisher()

    async def relay_with(publisher: Publisher) -> Handler:
        async def handle(record: Record) -> None:
            await publisher.publish("out", record.key, record.value)

        return handle

    first = make_loop(broker, await relay_with(broken), broken)
    with pytest.raises(FatalClientError):
        await asyncio.wait_for(first.run(), 5)
    # The supervisor's new process: same group, a working producer.
    second = make_loop(broker, await relay_with(broker.publisher()), broker.publisher())
    task = asyncio.create_task(second.run())
    async with asyncio.timeout(5):
        while committed(broker) < 2:
            await asyncio.sleep(0.01)
    second.stop()
    await task
    assert [r.value for r in broker.records("out")] == [b"one", b"two"]
    assert broker.records(DLQ) == []


async def test_run_until_signalled_stops_the_other_loops_then_raises() -> None:
    broker = InMemoryBroker()
    await feed(broker, b"slow", topic="other")
    started = asyncio.Event()

    async def slow(record: Record) -> None:
        started.set()
        await asyncio.sleep(0.2)  # in flight when the first loop dies

    async def fenced(record: Record) -> None:
        await started.wait()
        raise FatalClientError(FENCED)

    dying = make_loop(broker, fenced, broker.publisher())
    other = make_loop(broker, slow, broker.publisher(), name="other", topic="other")
    await feed(broker, b"good")
    with pytest.raises(FatalClientError, match="PRODUCER_FENCED"):
        await asyncio.wait_for(run_until_signalled([dying, other]), 5)
    assert other.stopping and other.handled == 1
    assert committed(broker, "other", "other") == 1  # drained and committed, not cancelled
    assert committed(broker) == 0 and broker.records(DLQ) == []


async def test_run_until_signalled_gives_up_on_a_loop_that_will_not_stop() -> None:
    broker = InMemoryBroker()
    await feed(broker, b"stuck", topic="other")
    started = asyncio.Event()

    async def stuck(record: Record) -> None:
        started.set()
        await asyncio.Event().wait()

    async def fenced(record: Record) -> None:
        await started.wait()
        raise FatalClientError(FENCED)

    dying = make_loop(broker, fenced, broker.publisher())
    other = make_loop(broker, stuck, broker.publisher(), name="other", topic="other")
    await feed(broker, b"good")
    with pytest.raises(FatalClientError):
        await asyncio.wait_for(run_until_signalled([dying, other], grace_s=0.2), 5)
    assert committed(broker, "other", "other") == 0


def test_a_worker_process_whose_loop_dies_exits_non_zero() -> None:
    # What every worker's __main__ does: asyncio.run(serve()) ending in run_until_signalled.
    script = textwrap.dedent(
        f"""
        import asyncio
        from imagegen.errors import FatalClientError
        from imagegen.kafka import ConsumerLoop
        from imagegen.kafka.memory import InMemoryBroker
        from imagegen.runtime import run_until_signalled

        async def serve():
            broker = InMemoryBroker()
            await broker.publisher().publish("in", "k", b"good")

            async def handle(record):
                raise FatalClientError({FENCED!r})

            loop = ConsumerLoop(
                name="worker", consumer=broker.consumer("worker", ["in"]),
                handlers={{"in": handle}}, dead_letters=broker.publisher(),
                dead_letter_topic="dlq", poll_timeout=0.05,
            )
            await run_until_signalled([loop])
            print("returned normally")

        asyncio.run(serve())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "FatalClientError: kafka: PRODUCER_FENCED" in done.stderr
    assert "returned normally" not in done.stdout
