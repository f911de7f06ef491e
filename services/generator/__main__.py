"""`python -m services.generator`: run the configured backends over the tier topics, by weight."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from contextlib import AsyncExitStack

from imagegen import preflight
from imagegen.blobstore import S3BlobStore
from imagegen.db import create_pool, migrate
from imagegen.health import ReadyFlag, broker_check, database_check, loops_check, object_store_check
from imagegen.kafka import DeferredPublisher
from imagegen.retention import pruning
from imagegen.runtime import health_endpoint, kafka_publisher, run_until_signalled
from imagegen.telemetry import configure_telemetry
from services.generator.cancellation import CancelWatch, PgCancellationStore
from services.generator.loops import control_loop, jobs_loop
from services.generator.migrations import MIGRATIONS, SCHEMA
from services.generator.providers import build_providers
from services.generator.settings import GeneratorSettings
from services.generator.worker import Generator

log = logging.getLogger(__name__)


async def serve(settings: GeneratorSettings) -> None:
    topics = settings.kafka.topics
    config = settings.generator
    providers = build_providers(config)
    async with AsyncExitStack() as stack:
        # Served while the models load: alive, not ready until they are.
        health = await stack.enter_async_context(health_endpoint(settings.health_port))
        model = ReadyFlag("loading")
        health.watch("model", model)
        # Load before joining the group: a pod that cannot load its models takes no work.
        for backend in providers.backends():
            await asyncio.to_thread(backend.load)
        model.set()
        log.info(
            "event=providers_loaded providers=%s default=%s", providers.names, providers.default
        )
        pool = await create_pool(settings.database_url, SCHEMA)
        stack.push_async_callback(pool.close)
        await migrate(pool, SCHEMA, MIGRATIONS)
        cancels = PgCancellationStore(pool)
        await stack.enter_async_context(pruning(cancels.pruner()))
        watch = CancelWatch(cancels, config.cancel_poll_s)
        blobs = await stack.enter_async_context(S3BlobStore(settings.s3))
        publisher = kafka_publisher(settings.kafka, "generator")
        stack.push_async_callback(publisher.close)
        # The attempt's messages are delivered before the loop commits, not one by one.
        generator = Generator(
            settings, providers, blobs, DeferredPublisher(publisher), topics, watch
        )
        jobs = jobs_loop(settings.kafka, config, generator, publisher)
        control = control_loop(settings.kafka, watch, publisher)
        health.watch("database", database_check(pool))
        health.watch("broker", broker_check(publisher))
        health.watch("object_store", object_store_check(blobs))
        health.watch("consumers", loops_check([jobs, control]))
        await run_until_signalled([jobs, control])


def main() -> None:
    # Weights come from disk or the local cache only (`imagegen models download` put them
    # there): set before diffusers/huggingface_hub are imported, since they read it once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if preflight.wants_check():
        sys.exit(preflight.check("generator", GeneratorSettings))
    settings = GeneratorSettings()
    configure_telemetry("generator", settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
