"""librdkafka's queue wake-up pipe (imagegen/kafka/wakeup.py) on this build of
confluent-kafka, with no broker: what the clients do when nobody answers still goes
through the pipe (Apache Kafka behind it: tests/integration/kafka)."""

from __future__ import annotations

import asyncio
import os
import time

import confluent_kafka
import pytest

from imagegen.errors import PermanentError, RetryableError
from imagegen.kafka import confluent, wakeup
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.kafka.wakeup import attach

NOBODY = "127.0.0.1:9"  # refused at once


@pytest.mark.parametrize("kind", ["consumer", "producer"])
def test_this_build_s_clients_get_a_pipe_on_the_queue_their_poll_serves(kind: str) -> None:
    config = {"bootstrap.servers": NOBODY, "client.id": "wake-test", "group.id": "g"}
    client = confluent_kafka.Consumer(config) if kind == "consumer" else None
    producer = confluent_kafka.Producer(config) if client is None else None
    wakeup = attach(client or producer, config)  # type: ignore[arg-type]
    assert wakeup is not None
    wakeup.close()
    assert wakeup.closed
    wakeup.clear()  # its descriptors are gone: never read another file's bytes
    if client is not None:
        client.close()  # does not wait: the queue was given back


def test_a_handle_that_librdkafka_names_otherwise_is_refused() -> None:
    # What a moved struct field would look like: a pointer to some other client.
    config = {"bootstrap.servers": NOBODY, "client.id": "one", "group.id": "g"}
    consumer = confluent_kafka.Consumer(config)
    try:
        assert attach(consumer, {**config, "client.id": "another"}) is None
    finally:
        consumer.close()


@pytest.mark.parametrize("wakeup", [True, False], ids=["loop-wakeup", "thread-poll"])
async def test_a_delivery_report_settles_its_publish(wakeup: bool) -> None:
    # Nobody to deliver to: librdkafka reports the message timed out, through the pipe
    # (or the poller thread), and the publish fails with it instead of waiting for ever.
    publisher = KafkaPublisher(
        NOBODY,
        "wake-test",
        {"message.timeout.ms": 300, "delivery.timeout.ms": 300},
        wakeup=wakeup,
    )
    try:
        assert (publisher._poller is None) is wakeup
        async with asyncio.timeout(20):
            with pytest.raises((RetryableError, PermanentError), match="MSG_TIMED_OUT"):
                await publisher.publish("t", "k", b"x")
    finally:
        await publisher.close()


async def test_a_consumer_waiting_on_the_loop_returns_at_its_timeout_and_close_ends_it() -> None:
    consumer = KafkaConsumer(NOBODY, "g", ["t"])
    assert consumer._wakeup is not None
    try:
        async with asyncio.timeout(10):
            assert await consumer.poll(0.3) is None
        waiting = asyncio.create_task(consumer.poll(60))
        await asyncio.sleep(0.2)
        assert not consumer._lock.locked()  # nothing blocks in a poll meanwhile
    finally:
        async with asyncio.timeout(10):
            await consumer.close()
    async with asyncio.timeout(10):  # the close ended the wait: no minute-long poll left
        with pytest.raises(RuntimeError, match="closed"):
            await waiting


async def test_a_second_poller_emptying_the_pipe_wakes_the_first() -> None:
    # The bytes a wait in flight is waiting for may be read by another caller's clear(): the
    # wait returns then too, instead of sleeping through the records they announced.
    producer = confluent_kafka.Producer({"bootstrap.servers": NOBODY, "client.id": "two"})
    wakeup = attach(producer, {"client.id": "two"})
    assert wakeup is not None
    try:
        first = asyncio.create_task(wakeup.wait(30))
        await asyncio.sleep(0)  # waiting, its reader on the pipe
        os.write(wakeup._write, b"!")  # what librdkafka writes
        wakeup.clear()  # before the loop saw the pipe readable
        async with asyncio.timeout(5):
            await first
    finally:
        wakeup.close()


async def test_what_a_client_queued_before_its_pipe_existed_is_still_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first connection attempt's log line can be queued before the pipe is set up.
    # librdkafka writes only when its queue stops being empty, so it would never write for
    # that queue again: every delivery report after it waited for ever.
    attach_now = wakeup.attach

    def attach_late(client: confluent_kafka.Producer, config: dict[str, object]) -> object:
        deadline = time.monotonic() + 10
        while len(client) == 0:  # the refused connection's log line, queued
            assert time.monotonic() < deadline, "nothing queued"
            time.sleep(0.01)
        return attach_now(client, config)

    monkeypatch.setattr(confluent, "attach", attach_late)
    publisher = KafkaPublisher(
        NOBODY, "late", {"message.timeout.ms": 300, "delivery.timeout.ms": 300}
    )
    try:
        assert publisher._wakeup is not None
        async with asyncio.timeout(10):
            with pytest.raises((RetryableError, PermanentError), match="MSG_TIMED_OUT"):
                await publisher.publish("t", "k", b"x")
    finally:
        await publisher.close()


async def test_a_producer_whose_pipe_never_wakes_it_still_settles_its_publishes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever loses a wake-up (nothing watches the pipe here), a poll every IDLE_POLL_S
    # while messages are in flight serves their reports: late, never for ever.
    monkeypatch.setattr(confluent, "IDLE_POLL_S", 0.5)
    monkeypatch.setattr(wakeup.QueueWakeup, "watch", lambda self, loop, serve: None)
    publisher = KafkaPublisher(
        NOBODY, "deaf", {"message.timeout.ms": 300, "delivery.timeout.ms": 300}
    )
    try:
        assert publisher._poller is None
        async with asyncio.timeout(10):
            with pytest.raises((RetryableError, PermanentError), match="MSG_TIMED_OUT"):
                await publisher.publish("t", "k", b"x")
    finally:
        await publisher.close()
    assert publisher._backstop is None


async def test_a_registration_left_by_a_closed_descriptor_does_not_swallow_the_pipe() -> None:
    # A descriptor closed while its reader was still registered leaves asyncio holding its
    # number; a pipe given that number next must still be watched for real.
    loop = asyncio.get_running_loop()
    config = {"bootstrap.servers": NOBODY, "client.id": "reuse", "socket.timeout.ms": 60000}
    producer = confluent_kafka.Producer(config)
    stale_read, stale_write = os.pipe()
    loop.add_reader(stale_read, lambda: None)
    os.close(stale_read)  # still registered: asyncio keeps the number
    os.close(stale_write)
    queue_wakeup = attach(producer, config)  # its pipe takes the lowest free numbers
    assert queue_wakeup is not None
    try:
        if queue_wakeup._read != stale_read:
            pytest.skip("a librdkafka thread took the number first")
        woken = asyncio.Event()
        queue_wakeup.watch(loop, woken.set)
        async with asyncio.timeout(5):
            await woken.wait()  # the byte the pipe starts with
    finally:
        queue_wakeup.close()
        # The event loop is the whole session's: a stale registration left behind (when the
        # pipe got another number) swallowed the next descriptor given that number, and a
        # later test's PostgreSQL connection then waited its whole 60 s connect timeout.
        loop.remove_reader(stale_read)
