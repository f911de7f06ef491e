"""`python -m services.storage`: final object layout, metadata, image_stored events."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack

from imagegen import preflight
from imagegen.blobstore import S3BlobStore
from imagegen.db import create_pool, migrate
from imagegen.events import EventEmitter
from imagegen.health import broker_check, database_check, loops_check, object_store_check
from imagegen.kafka import DeferredPublisher
from imagegen.retention import REPLAY_WINDOW, AgePruner, pruning
from imagegen.runtime import consumer_loop, health_endpoint, kafka_publisher, run_until_signalled
from imagegen.telemetry import configure_telemetry
from services.storage.handlers import SOURCE, StorageService
from services.storage.lifecycle import ImageLifecycle
from services.storage.migrations import MIGRATIONS
from services.storage.settings import StorageSettings

SCHEMA = "storage"


async def serve(settings: StorageSettings) -> None:
    topics = settings.kafka.topics
    async with AsyncExitStack() as stack:
        health = await stack.enter_async_context(health_endpoint(settings.health_port))
        pool = await create_pool(settings.database_url, SCHEMA)
        stack.push_async_callback(pool.close)
        await migrate(pool, SCHEMA, MIGRATIONS)
        # A discarded version's late attempt comes within the replay window or never.
        discards = AgePruner(pool, "discarded_images", "discarded_at", keep=REPLAY_WINDOW)
        await stack.enter_async_context(pruning(discards))
        blobs = await stack.enter_async_context(S3BlobStore(settings.s3))
        publisher = kafka_publisher(settings.kafka, "storage")
        stack.push_async_callback(publisher.close)
        # image_stored is delivered before the loop commits, not waited for in the handler.
        service = StorageService(pool, blobs, DeferredPublisher(publisher), topics)
        lifecycle = ImageLifecycle(
            pool,
            blobs,
            EventEmitter(publisher, topics.events, SOURCE),
            retain_deleted_stories=settings.retain_deleted_stories,
        )
        # One consumer for both topics: images on lanes, requests (deletes, reviews) in
        # order. Its group is `storage`, which read images before; requests were read by
        # `storage-requests`, whose offsets it takes over (imagegen/kafka/handover.py).
        loops = [
            consumer_loop(
                settings.kafka,
                "storage",
                {
                    topics.images_processed: service.on_processed_image,
                    topics.requests: lifecycle.on_request,
                },
                publisher,
                lanes=settings.storage_concurrency,
                ordered=frozenset({topics.requests}),
                previous_groups={topics.requests: "storage-requests"},
            ),
        ]
        health.watch("database", database_check(pool))
        health.watch("broker", broker_check(publisher))
        health.watch("object_store", object_store_check(blobs))
        health.watch("consumers", loops_check(loops))
        await run_until_signalled(loops)


def main() -> None:
    if preflight.wants_check():
        sys.exit(preflight.check("storage", StorageSettings))
    settings = StorageSettings()
    configure_telemetry("storage", settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
