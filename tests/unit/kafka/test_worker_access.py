"""A broker that refuses the service (a missing ACL, a wrong password) is not the message's
fault: the consumer loop never dead-letters for it, keeps the record uncommitted, says why
at ERROR on every attempt, and goes on once the refusal is lifted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from imagegen.errors import BrokerAccessError
from imagegen.kafka import ConsumerLoop, Record
from imagegen.kafka.memory import InMemoryBroker

IN, DLQ = "in", "dead-letters"
DENIED = (
    "Kafka denied user imagegen-storage (SASL/SCRAM-SHA-512 over SASL_SSL) access to topic"
    " ns.requests.v1 (TOPIC_AUTHORIZATION_FAILED)"
)


async def test_a_refused_publish_is_retried_loudly_never_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = InMemoryBroker()
    await broker.publisher().publish(IN, "k", b"good")
    attempts = 0
    granted = asyncio.Event()

    async def handle(record: Record) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise BrokerAccessError(DENIED)
        granted.set()  # the operator granted the ACL meanwhile

    loop = ConsumerLoop(
        name="storage-jobs",
        consumer=broker.consumer("storage-jobs", [IN]),
        handlers={IN: handle},
        dead_letters=broker.publisher(),
        dead_letter_topic=DLQ,
        max_attempts=2,  # an unknown error would be dead-lettered after 2
        backoff_initial=0.01,
        poll_timeout=0.05,
    )
    caplog.set_level(logging.ERROR, logger="imagegen.kafka.worker")
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(granted.wait(), 5)
    loop.stop()
    await asyncio.wait_for(task, 5)
    assert attempts == 4
    assert broker.records(DLQ) == [] and loop.dead_lettered == 0 and loop.handled == 1
    denied = [r for r in caplog.records if "handler_access_denied" in r.getMessage()]
    assert len(denied) == 3 and all(DENIED in r.getMessage() for r in denied)
    assert all(r.levelno == logging.ERROR for r in denied)
