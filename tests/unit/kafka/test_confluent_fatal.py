"""The confluent-kafka adapters classify librdkafka's fatal errors as `FatalClientError`.

The publisher tests run the real client against librdkafka's mock broker, which answers a
Produce with OUT_OF_ORDER_SEQUENCE_NUMBER: the idempotent producer's fatal error after a
broker lost its producer state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from confluent_kafka import KafkaError

from imagegen.errors import FatalClientError, PermanentError, RetryableError
from imagegen.kafka.access import ACCESS
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher, _error
from tests.unit.kafka.mock_cluster import MockCluster


@pytest.mark.parametrize(
    "code",
    [KafkaError.PRODUCER_FENCED, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN],
)
def test_an_error_flagged_fatal_is_a_fatal_client_error(code: int) -> None:
    error = _error(KafkaError(code, "broken", fatal=True))
    assert isinstance(error, FatalClientError)
    assert not isinstance(error, PermanentError | RetryableError)
    assert str(error) == f"kafka: {KafkaError(code).name()}: broken"


@pytest.mark.parametrize(
    "code",
    [
        # What follows a fatal error, none of it flagged fatal (measured, see confluent.py).
        KafkaError._FATAL,
        KafkaError._PURGE_QUEUE,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.PRODUCER_FENCED,
    ],
)
def test_what_a_broken_client_reports_unflagged_is_fatal_too(code: int) -> None:
    assert not KafkaError(code).fatal()
    assert isinstance(_error(KafkaError(code)), FatalClientError)


def test_other_errors_keep_their_classes() -> None:
    assert isinstance(_error(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), PermanentError)
    assert isinstance(_error(KafkaError(KafkaError.UNKNOWN)), RetryableError)
    assert isinstance(
        _error(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True)), RetryableError
    )


class _ErrorMessage:
    """What Consumer.poll returns for a client error (only `error()` is read)."""

    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def error(self) -> KafkaError:
        return self._error


async def test_consumer_poll_raises_on_the_fatal_error_librdkafka_returns() -> None:
    # A consumer's fatal error (a static member fenced) comes back from poll() as a message
    # with code _FATAL and fatal() False; it used to be logged and polled past for ever.
    consumer = KafkaConsumer("127.0.0.1:9", "g", ["t"])
    try:
        fatal = _ErrorMessage(KafkaError(KafkaError._FATAL, "Fatal error: fenced"))
        consumer._take = lambda max_records, timeout: [fatal]  # type: ignore[method-assign,list-item]
        with pytest.raises(FatalClientError, match="fenced"):
            await consumer.poll(0.01)
        transient = _ErrorMessage(KafkaError(KafkaError._TRANSPORT, "broker down"))
        consumer._take = lambda max_records, timeout: [transient]  # type: ignore[method-assign,list-item]
        assert await consumer.poll(0.01) is None
    finally:
        await consumer.close()


@pytest.mark.parametrize("fenced", [False, True])
async def test_a_static_member_leaves_the_group_on_close_unless_it_was_fenced(
    fenced: bool,
) -> None:
    consumer = KafkaConsumer("127.0.0.1:9", "g", ["t"], group_instance_id="p-g")
    left: list[float] = []
    consumer._leave = lambda timeout=5.0: left.append(timeout)  # type: ignore[method-assign]
    if fenced:
        fatal = _ErrorMessage(KafkaError(KafkaError._FATAL, "Fatal error: fenced"))
        consumer._take = lambda max_records, timeout: [fatal]  # type: ignore[method-assign,list-item]
        with pytest.raises(FatalClientError):
            await consumer.poll(0.01)
    await consumer.close()
    assert left == ([] if fenced else [5.0])


@pytest.fixture(params=["plain", "watched"])
async def fenced(
    cluster: MockCluster, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[KafkaPublisher, list[Any]]]:
    """A publisher whose next produce request the broker answers with a fatal error; the
    services' publishers have the access watch's error callback, which must pass the fatal
    error on (librdkafka raises it from poll() only when no callback is set)."""
    heard: list[Any] = []
    extra = {"error_cb": ACCESS.error_cb} if request.param == "watched" else None
    publisher = KafkaPublisher(cluster.bootstrap, "fatal-test", extra, on_fatal=heard.append)
    try:
        await asyncio.wait_for(publisher.publish("t", "k", b"first"), 10)
        assert heard == [] and publisher.fatal is None
        cluster.fail_produce(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)
        yield publisher, heard
    finally:
        await publisher.close()


async def test_publisher_raises_the_fatal_error_and_refuses_every_publish_after_it(
    fenced: tuple[KafkaPublisher, list[Any]],
) -> None:
    publisher, heard = fenced
    # Before: the fatal error killed the poller thread, this publish waited for ever and
    # the next one raised PermanentError (the consumer loop dead-lettered its message).
    with pytest.raises(FatalClientError, match="OUT_OF_ORDER_SEQUENCE_NUMBER"):
        await asyncio.wait_for(publisher.publish("t", "k", b"in flight"), 10)
    started = time.monotonic()
    for _ in range(3):
        with pytest.raises(FatalClientError, match="OUT_OF_ORDER_SEQUENCE_NUMBER"):
            await publisher.publish("t", "k", b"after")
    assert time.monotonic() - started < 0.5  # at once, not after a delivery timeout
    # Metadata requests still work after a fatal error; readiness must not say so.
    with pytest.raises(FatalClientError):
        await publisher.ping(2.0)
    assert [type(e) for e in heard] == [FatalClientError]  # told once
    assert isinstance(publisher.fatal, FatalClientError)


async def test_concurrent_publishes_end_delivered_or_fatal_never_permanent(
    fenced: tuple[KafkaPublisher, list[Any]],
) -> None:
    publisher, _ = fenced
    results = await asyncio.wait_for(
        asyncio.gather(
            *(publisher.publish("t", f"k{i}", f"m{i}".encode()) for i in range(20)),
            return_exceptions=True,
        ),
        10,
    )
    # librdkafka still delivers some of what it had queued; the rest fail with the fatal
    # error, none as a PermanentError that would dead-letter the message being handled.
    assert all(r is None or isinstance(r, FatalClientError) for r in results), results
    assert any(isinstance(r, FatalClientError) for r in results)
    with pytest.raises(FatalClientError):
        await publisher.publish("t", "k", b"after")
