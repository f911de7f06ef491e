"""What every worker service does the same way: clients from settings, signals, the run loop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from imagegen.errors import FatalClientError
from imagegen.health import HealthServer
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.kafka.lanes import laned_loop
from imagegen.kafka.membership import instance_id
from imagegen.kafka.ports import BatchHandler, Handler, Publisher
from imagegen.kafka.security import consumer_config, watched_config
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


def kafka_publisher(
    settings: KafkaSettings,
    service: str,
    on_fatal: Callable[[FatalClientError], None] | None = None,
) -> KafkaPublisher:
    """The service's producer; `on_fatal` (thread-safe) hears once if it breaks for good."""
    return KafkaPublisher(
        settings.bootstrap,
        client_id=f"{settings.client_id}-{service}",
        extra=watched_config(settings),
        on_fatal=on_fatal,
        wakeup=settings.poll_wakeup,
    )


def kafka_consumer(
    settings: KafkaSettings,
    group: str,
    topics: list[str],
    previous_groups: dict[str, str] | None = None,
) -> KafkaConsumer:
    """A member of `<ns>.<group>` on `topics`; `previous_groups` (topic -> group name): topics
    it took over from another group of the namespace (imagegen/kafka/handover.py)."""
    ns = settings.namespace
    return KafkaConsumer(
        settings.bootstrap,
        group_id=f"{ns}.{group}",
        topics=topics,
        client_id=f"{settings.client_id}-{group}",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_ms(),
        fetch_wait_max_ms=settings.fetch_wait_max_ms,
        commit_interval_ms=settings.commit_interval_ms,
        group_instance_id=instance_id(settings.instance_id, group),
        extra=consumer_config(settings),
        previous_groups={t: f"{ns}.{g}" for t, g in (previous_groups or {}).items()} or None,
        wakeup=settings.poll_wakeup,
    )


def consumer_loop(
    settings: KafkaSettings,
    group: str,
    handlers: dict[str, Handler],
    publisher: Publisher,
    *,
    lanes: int = 1,
    ordered: frozenset[str] = frozenset(),
    batch_handlers: dict[str, BatchHandler] | None = None,
    previous_groups: dict[str, str] | None = None,
) -> ConsumerLoop:
    """A consumer loop on the real broker that dead-letters to the namespace's topic;
    with `lanes` > 1, that many records at once (see imagegen/kafka/lanes.py), except that
    the records of an `ordered` topic's partition are handled one after another; with
    `batch_handlers`, records handed over together are handled together (one lane only).
    `previous_groups`: topics this loop's group took over from another group (by name)."""
    consumer = kafka_consumer(settings, group, list(handlers), previous_groups)
    if lanes > 1:
        return laned_loop(
            group,
            consumer,
            handlers,
            lanes,
            dead_letters=publisher,
            dead_letter_topic=settings.topics.dead_letter,
            poll_timeout=settings.poll_timeout_ms / 1000,
            ordered=ordered,
        )
    return ConsumerLoop(
        name=group,
        consumer=consumer,
        handlers=handlers,
        dead_letters=publisher,
        dead_letter_topic=settings.topics.dead_letter,
        poll_timeout=settings.poll_timeout_ms / 1000,
        batch_handlers=batch_handlers,
    )


async def run_until_signalled(loops: list[ConsumerLoop], grace_s: float = 30.0) -> None:
    """Run consumer loops until SIGTERM/SIGINT; each then drains its in-flight message, commits.

    A loop that dies (a `FatalClientError`: its Kafka client is broken for good) stops the
    others the same way, and its error is raised once they are done (or after `grace_s`), so
    the process exits non-zero and its supervisor starts a fresh one, rather than the others
    running on while the service's resources are closed under them.
    """
    if not loops:
        return
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("event=stop_requested loops=%d", len(loops))
        for consumer_loop in loops:
            consumer_loop.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    tasks = {asyncio.create_task(lp.run(), name=f"consumer-{lp.name}"): lp for lp in loops}
    try:
        done, running = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if running:  # one died: the others drain their in-flight message and stop
            stop()
            _, overran = await asyncio.wait(running, timeout=grace_s)
            if overran:
                log.warning("event=consumer_stop_timeout grace_s=%.1f", grace_s)
    finally:
        for task in tasks:
            task.cancel()  # a no-op for those done
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    died = {tasks[t].name: e for t in done if not t.cancelled() and (e := t.exception())}
    if died:
        error = next(iter(died.values()))
        log.error("event=consumers_failed loops=%s error=%r", ",".join(died), str(error))
        raise error
