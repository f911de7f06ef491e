"""The scheduler process ends (non-zero) when its outbox relay's producer breaks for good."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from imagegen.errors import FatalClientError
from imagegen.kafka import BatchHandler, ConsumerLoop, Handler, Publisher
from imagegen.kafka.memory import InMemoryBroker
from imagegen.settings import KafkaSettings
from services.scheduler import __main__ as scheduler_main
from tests.unit.kafka.fakes import BrokenPublisher
from tests.unit.scheduler.fakes import fast_settings
from tests.unit.scheduler.memrig import pack


async def test_a_fatal_error_in_the_relay_stops_the_consumers_and_ends_serve(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = InMemoryBroker()
    broken = BrokenPublisher()
    settings = fast_settings(
        database_url=database_url, health_port=None, kafka=KafkaSettings(namespace="unit")
    )
    topics = settings.kafka.topics
    loops: list[ConsumerLoop] = []

    def memory_loop(
        kafka: KafkaSettings,
        group: str,
        handlers: dict[str, Handler],
        publisher: Publisher,
        *,
        batch_handlers: dict[str, BatchHandler] | None = None,
        previous_groups: dict[str, str] | None = None,  # the real broker's concern
    ) -> ConsumerLoop:
        loop = ConsumerLoop(
            name=group,
            consumer=broker.consumer(group, list(handlers)),
            handlers=handlers,
            batch_handlers=batch_handlers,
            dead_letters=publisher,
            dead_letter_topic=kafka.topics.dead_letter,
            poll_timeout=0.05,
        )
        loops.append(loop)
        return loop

    def broken_publisher(*_: Any, **__: Any) -> BrokenPublisher:
        return broken

    monkeypatch.setattr(scheduler_main, "kafka_publisher", broken_publisher)
    monkeypatch.setattr(scheduler_main, "consumer_loop", memory_loop)
    request = pack(1)
    await broker.publisher().publish(topics.requests, request.user_id, request)
    # asyncio.run(serve()) raising is what makes `python -m services.scheduler` exit 1.
    with pytest.raises(FatalClientError, match="PRODUCER_FENCED"):
        await asyncio.wait_for(scheduler_main.serve(settings), 30)
    assert broken.attempts >= 1  # the relay tried to publish what the request staged
    assert loops and all(loop.stopping for loop in loops)
    assert sum(n for (g, _, _), n in broker.committed.items() if g == "scheduler") == 1
    assert broker.records(topics.dead_letter) == []
