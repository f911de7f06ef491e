"""`python -m services.generator`: run the configured backends over the tier topics, by weight."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from imagegen.blobstore import S3BlobStore
from imagegen.db import create_pool, migrate
from imagegen.kafka import ConsumerLoop
from imagegen.kafka.confluent import KafkaConsumer
from imagegen.runtime import consumer_loop, kafka_publisher, run_until_signalled
from imagegen.settings import KafkaSettings
from imagegen.telemetry import configure_logging, configure_tracing
from schemas.topics import Tier
from services.generator.cancellation import CancelListener, CancelWatch, PgCancellationStore
from services.generator.migrations import MIGRATIONS, SCHEMA
from services.generator.providers import build_providers
from services.generator.settings import GeneratorSettings
from services.generator.tiers import TierPicker, WeightedTierConsumer
from services.generator.worker import Generator

log = logging.getLogger(__name__)

# librdkafka prefetches up to 100k messages per partition by default; a GPU pod needs only
# the next one, and a smaller local queue leaves the rest for pods that KEDA adds.
_SMALL_PREFETCH = {"queued.min.messages": 10, "queued.max.messages.kbytes": 2048}


def tier_consumer(settings: KafkaSettings, tier: Tier) -> KafkaConsumer:
    """The consumer of one tier topic, in that tier's own group."""
    group = f"generator-{tier.value}"
    return KafkaConsumer(
        settings.bootstrap,
        group_id=f"{settings.namespace}.{group}",
        topics=[settings.topics.jobs(tier)],
        client_id=f"{settings.client_id}-{group}",
        session_timeout_ms=settings.session_timeout_ms,
        extra=_SMALL_PREFETCH,
    )


async def serve(settings: GeneratorSettings) -> None:
    topics = settings.kafka.topics
    config = settings.generator
    providers = build_providers(config)
    # Load before joining the group: a pod that cannot load its models takes no work.
    for backend in providers.backends():
        await asyncio.to_thread(backend.load)
    log.info("event=providers_loaded providers=%s default=%s", providers.names, providers.default)
    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url, SCHEMA)
        stack.push_async_callback(pool.close)
        await migrate(pool, SCHEMA, MIGRATIONS)
        watch = CancelWatch(PgCancellationStore(pool), config.cancel_poll_s)
        blobs = await stack.enter_async_context(S3BlobStore(settings.s3))
        publisher = kafka_publisher(settings.kafka, "generator")
        stack.push_async_callback(publisher.close)
        generator = Generator(settings, providers, blobs, publisher, topics, watch)
        jobs = ConsumerLoop(
            name="generator",
            consumer=WeightedTierConsumer(
                {tier: tier_consumer(settings.kafka, tier) for tier in Tier},
                {tier: topics.jobs(tier) for tier in Tier},
                TierPicker.from_settings(config.tier_weights, config.tier_min_share),
            ),
            handlers={topics.jobs(tier): generator.on_job for tier in Tier},
            dead_letters=publisher,
            dead_letter_topic=topics.dead_letter,
        )
        control = consumer_loop(
            settings.kafka,
            "generator-control",
            {topics.events: CancelListener(watch).on_event},
            publisher,
        )
        await run_until_signalled([jobs, control])


def main() -> None:
    settings = GeneratorSettings()
    configure_logging("generator", settings.log_level)
    configure_tracing("generator")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
