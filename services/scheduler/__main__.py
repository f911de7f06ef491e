"""`python -m services.scheduler`: turn requests into jobs, retry, fail over and close jobs."""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import AsyncExitStack

from imagegen import preflight
from imagegen.db import create_pool, migrate
from imagegen.health import broker_check, database_check, loops_check
from imagegen.runtime import consumer_loop, health_endpoint, kafka_publisher, run_until_signalled
from imagegen.telemetry import configure_telemetry
from services.scheduler.handlers import Scheduler
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.settings import SchedulerSettings

SCHEMA = "scheduler"
log = logging.getLogger(__name__)


async def serve(settings: SchedulerSettings) -> None:
    topics = settings.kafka.topics
    async with AsyncExitStack() as stack:
        health = await stack.enter_async_context(health_endpoint(settings.health_port))
        pool = await create_pool(settings.database_url, SCHEMA, max_size=10)
        stack.push_async_callback(pool.close)
        await migrate(pool, SCHEMA, MIGRATIONS)
        publisher = kafka_publisher(settings.kafka, "scheduler")
        stack.push_async_callback(publisher.close)
        scheduler = Scheduler(settings, pool, publisher, topics)
        stack.push_async_callback(scheduler.scenes.aclose)  # the LLM client's connections
        # One consumer for both topics: requests and the events that close jobs. Its group
        # is `scheduler`, which read requests before; events were read by
        # `scheduler-outcomes`, whose offsets it takes over (imagegen/kafka/handover.py).
        loops = [
            consumer_loop(
                settings.kafka,
                "scheduler",
                {topics.requests: scheduler.on_request, topics.events: scheduler.on_event},
                publisher,
                batch_handlers={
                    topics.requests: scheduler.on_requests,
                    topics.events: scheduler.on_events,
                },
                previous_groups={topics.events: "scheduler-outcomes"},
            ),
        ]
        health.watch("database", database_check(pool))
        health.watch("broker", broker_check(publisher))
        health.watch("consumers", loops_check(loops))
        background = asyncio.create_task(scheduler.run_background())

        def background_ended(task: asyncio.Task[None]) -> None:
            # The outbox relay and the retry ticker must outlive the consumers: if one dies (a
            # fatal producer error such as PRODUCER_FENCED after a broker outage), stop and
            # exit so that a fresh process takes over, rather than go on staging events that
            # nothing will publish (fault test: object store restarted mid-run).
            if not task.cancelled() and task.exception() is not None:
                log.error("event=background_failed error=%r", str(task.exception()))
                for consumer in loops:
                    consumer.stop()

        background.add_done_callback(background_ended)
        try:
            await run_until_signalled(loops)
        finally:
            # Consumers drained first; then the relay publishes what they staged, and stops.
            # A relay that died raises its error here: the process exits non-zero.
            scheduler.stop_background()
            await background


def main() -> None:
    if preflight.wants_check():
        sys.exit(preflight.check("scheduler", SchedulerSettings))
    settings = SchedulerSettings()
    configure_telemetry("scheduler", settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
