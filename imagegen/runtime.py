"""What every worker service does the same way: clients from settings, signals, the run loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from imagegen.health import HealthServer
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.kafka.ports import Handler, Publisher
from imagegen.kafka.worker import ConsumerLoop
from imagegen.settings import KafkaSettings

log = logging.getLogger(__name__)


@asynccontextmanager
async def health_endpoint(port: int | None) -> AsyncIterator[HealthServer]:
    """The worker's /healthz, /readyz, /metrics on `port`; not served when `port` is None
    (checks may still be added: nobody asks them)."""
    server = HealthServer(port or 0, {})
    if port is None:
        yield server
        return
    async with server:
        yield server


def kafka_publisher(settings: KafkaSettings, service: str) -> KafkaPublisher:
    return KafkaPublisher(settings.bootstrap, client_id=f"{settings.client_id}-{service}")


def kafka_consumer(settings: KafkaSettings, group: str, topics: list[str]) -> KafkaConsumer:
    return KafkaConsumer(
        settings.bootstrap,
        group_id=f"{settings.namespace}.{group}",
        topics=topics,
        client_id=f"{settings.client_id}-{group}",
        session_timeout_ms=settings.session_timeout_ms,
    )


def consumer_loop(
    settings: KafkaSettings,
    group: str,
    handlers: dict[str, Handler],
    publisher: Publisher,
) -> ConsumerLoop:
    """A consumer loop on the real broker that dead-letters to the namespace's topic."""
    return ConsumerLoop(
        name=group,
        consumer=kafka_consumer(settings, group, list(handlers)),
        handlers=handlers,
        dead_letters=publisher,
        dead_letter_topic=settings.topics.dead_letter,
    )


async def run_until_signalled(loops: list[ConsumerLoop]) -> None:
    """Run consumer loops until SIGTERM/SIGINT; each then drains its in-flight message, commits."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("event=stop_requested loops=%d", len(loops))
        for consumer_loop in loops:
            consumer_loop.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        await asyncio.gather(*(consumer_loop.run() for consumer_loop in loops))
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
