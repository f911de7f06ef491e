"""Every dead letter is counted (`imagegen_dead_letters_total{topic, error_type}`), which the
ImagegenDeadLettersGrowing alert watches (imagegen/alerts.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from imagegen.errors import PermanentError
from imagegen.kafka import Record, worker
from imagegen.kafka.memory import InMemoryBroker
from imagegen.kafka.worker import ConsumerLoop

IN, DLQ = "in", "dlq"


@dataclass
class RecordingCounter:
    added: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def add(self, amount: float, attributes: dict[str, Any]) -> None:
        self.added.append((amount, attributes))


@dataclass
class Instruments:
    dead_letters: RecordingCounter = field(default_factory=RecordingCounter)


async def test_a_dead_lettered_record_is_counted_with_its_topic_and_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded = Instruments()
    monkeypatch.setattr(worker, "instruments", lambda: recorded)
    broker = InMemoryBroker(partitions=1)
    publisher = broker.publisher()
    for value in (b"poison", b"fine"):
        await publisher.publish(IN, "k", value)
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"poison":
            raise PermanentError("cannot decode")
        handled.append(record.value)

    loop = ConsumerLoop(
        name="w",
        consumer=broker.consumer("w", [IN]),
        handlers={IN: handle},
        dead_letters=broker.publisher(),
        dead_letter_topic=DLQ,
        poll_timeout=0.01,
    )
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(10):
        while not handled:
            await asyncio.sleep(0.01)
    loop.stop()
    await task
    assert len(broker.records(DLQ)) == 1
    assert recorded.dead_letters.added == [(1, {"topic": IN, "error_type": "PermanentError"})]
