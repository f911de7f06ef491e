"""`python -m services.scheduler`: turn requests into jobs and close packs."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from imagegen.db import create_pool, migrate
from imagegen.runtime import consumer_loop, kafka_publisher, run_until_signalled
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
            consumer_loop(
                settings.kafka, "scheduler", {topics.requests: scheduler.on_request}, publisher
            ),
            consumer_loop(
                settings.kafka, "scheduler-outcomes", {topics.events: scheduler.on_event}, publisher
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
