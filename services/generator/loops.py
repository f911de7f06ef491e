"""The generator's consumer loops on the real broker: weighted jobs (on lanes), cancel control."""

from __future__ import annotations

from imagegen.kafka import ConsumerLoop, Publisher
from imagegen.kafka.confluent import KafkaConsumer
from imagegen.runtime import consumer_loop
from imagegen.settings import KafkaSettings
from schemas.topics import Tier
from services.generator.cancellation import CancelListener, CancelWatch
from services.generator.lanes import laned_loop
from services.generator.settings import BackendSettings
from services.generator.tiers import TierPicker, WeightedTierConsumer
from services.generator.worker import Generator

JOBS_GROUP = "generator"
CONTROL_GROUP = "generator-control"

# librdkafka prefetches up to 100k messages per partition by default; a GPU pod needs only
# the next one, and a smaller local queue leaves the rest for pods that KEDA adds.
_SMALL_PREFETCH = {"queued.min.messages": 10, "queued.max.messages.kbytes": 2048}


def tier_consumer(settings: KafkaSettings, tier: Tier) -> KafkaConsumer:
    """The consumer of one tier topic; every tier's consumer is a member of `<ns>.generator`."""
    return KafkaConsumer(
        settings.bootstrap,
        group_id=f"{settings.namespace}.{JOBS_GROUP}",
        topics=[settings.topics.jobs(tier)],
        client_id=f"{settings.client_id}-{JOBS_GROUP}-{tier.value}",
        session_timeout_ms=settings.session_timeout_ms,
        extra=_SMALL_PREFETCH,
    )


def jobs_loop(
    settings: KafkaSettings,
    config: BackendSettings,
    generator: Generator,
    publisher: Publisher,
    *,
    backoff_initial: float = 0.2,
) -> ConsumerLoop:
    """Images from every tier topic in weighted tier order, on `lanes_for(config)` lanes."""
    topics = settings.topics
    weighted = WeightedTierConsumer(
        {tier: tier_consumer(settings, tier) for tier in Tier},
        {tier: topics.jobs(tier) for tier in Tier},
        TierPicker.from_settings(config.tier_weights, config.tier_min_share),
    )
    lanes = lanes_for(config) if generator.batches else 1
    generator.batcher.capacity = lanes
    return laned_loop(
        "generator",
        weighted,
        {topics.jobs(tier): generator.on_job for tier in Tier},
        lanes,
        dead_letters=publisher,
        dead_letter_topic=topics.dead_letter,
        backoff_initial=backoff_initial,
    )


def lanes_for(config: BackendSettings) -> int:
    """Images handled at once: one batch on the GPU and the next one gathering."""
    return 1 if config.batch_max_size <= 1 else 2 * config.batch_max_size


def control_loop(settings: KafkaSettings, watch: CancelWatch, publisher: Publisher) -> ConsumerLoop:
    """`job_cancelled` events from the events topic into the generator's schema."""
    return consumer_loop(
        settings, CONTROL_GROUP, {settings.topics.events: CancelListener(watch).on_event}, publisher
    )
