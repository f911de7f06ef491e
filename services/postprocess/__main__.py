"""`python -m services.postprocess`: renditions for every generated image."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AsyncExitStack

from imagegen import preflight
from imagegen.blobstore import S3BlobStore
from imagegen.db import create_pool, migrate
from imagegen.faces import load_cascade
from imagegen.health import broker_check, database_check, loops_check, object_store_check
from imagegen.kafka import DeferredPublisher
from imagegen.retention import pruning
from imagegen.runtime import consumer_loop, health_endpoint, kafka_publisher, run_until_signalled
from imagegen.safety import SafetyCheck, SafetyPolicy, load_classifier
from imagegen.telemetry import configure_telemetry
from services.postprocess.background import load_background_remover
from services.postprocess.consistency import ConsistencyScorer, DlibFaceEncoder
from services.postprocess.handlers import ConsistencyCheck, Postprocessor
from services.postprocess.settings import PostprocessSettings
from services.postprocess.variations import MIGRATIONS, PostgresVariationStore, variations_pruner

SCHEMA = "postprocess"


async def serve(settings: PostprocessSettings) -> None:
    topics = settings.kafka.topics
    async with AsyncExitStack() as stack:
        health = await stack.enter_async_context(health_endpoint(settings.health_port))
        blobs = await stack.enter_async_context(S3BlobStore(settings.s3))
        publisher = kafka_publisher(settings.kafka, "postprocess")
        stack.push_async_callback(publisher.close)
        consistency = None
        if settings.consistency_enabled:
            pool = await create_pool(settings.database_url, SCHEMA)
            stack.push_async_callback(pool.close)
            await migrate(pool, SCHEMA, MIGRATIONS)
            health.watch("database", database_check(pool))
            await stack.enter_async_context(pruning(variations_pruner(pool)))
            scorer = ConsistencyScorer(
                await asyncio.to_thread(DlibFaceEncoder), threshold=settings.consistency_threshold
            )
            consistency = ConsistencyCheck(scorer, PostgresVariationStore(pool))
        background = await asyncio.to_thread(
            load_background_remover,
            settings.postprocess_background_model,
            settings.postprocess_background_input_size,
        )
        safety = None
        if settings.safety_check:
            classifier = await asyncio.to_thread(
                load_classifier, settings.safety_classifier_factory, settings.safety_model_dir
            )
            policy = SafetyPolicy(settings.safety_threshold, settings.safety_threshold_children)
            # Close-up portraits get the classifier's framed second look (imagegen/safety.py).
            faces = await asyncio.to_thread(load_cascade)
            safety = SafetyCheck(classifier, policy, faces=faces)
        worker = Postprocessor(
            settings,
            blobs,
            # Its publishes are delivered before the loop commits, not waited for one by one.
            DeferredPublisher(publisher),
            topics,
            consistency=consistency,
            background=background,
            safety=safety,
        )
        loop = consumer_loop(
            settings.kafka,
            "postprocess",
            {topics.images_raw: worker.on_raw_image},
            publisher,
            lanes=settings.postprocess_concurrency,
        )
        health.watch("broker", broker_check(publisher))
        health.watch("object_store", object_store_check(blobs))
        health.watch("consumers", loops_check([loop]))
        await run_until_signalled([loop])


def main() -> None:
    if preflight.wants_check():
        sys.exit(preflight.check("postprocess", PostprocessSettings))
    settings = PostprocessSettings()
    configure_telemetry("postprocess", settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
