"""`python -m services.scheduler`: turn requests into jobs and close packs."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from imagegen.db import create_pool, migrate
from imagegen.kafka import ConsumerLoop
from imagegen.runtime import kafka_consumer, kafka_publisher, run_until_signalled
from imagegen.telemetry import configure_logging, configure_tracing
from services.scheduler.handlers import Scheduler
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.settings import SchedulerSettings

SCHEMA = "scheduler"


async def serve(settings: SchedulerSettings) -> None:
    topics = settings.kafka.topics
    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, SCHEMA)
        stack.push_async_callback(pool.close)
        await migrate(pool, SCHEMA, MIGRATIONS)
        publisher = kafka_publisher(settings.kafka, "scheduler")
        stack.push_async_callback(publisher.close)
        scheduler = Scheduler(settings, pool, publisher, topics)
        loops = [
            ConsumerLoop(
                name="scheduler-requests",
                consumer=kafka_consumer(settings.kafka, "scheduler", [topics.requests]),
                handlers={topics.requests: scheduler.on_request},
                dead_letters=publisher,
                dead_letter_topic=topics.dead_letter,
            ),
            ConsumerLoop(
                name="scheduler-outcomes",
                consumer=kafka_consumer(settings.kafka, "scheduler-outcomes", [topics.events]),
                handlers={topics.events: scheduler.on_event},
                dead_letters=publisher,
                dead_letter_topic=topics.dead_letter,
            ),
        ]
        await run_until_signalled(loops)


def main() -> None:
    settings = SchedulerSettings()
    configure_logging("scheduler", settings.log_level)
    configure_tracing("scheduler")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
