"""The generator's consumer loops on the real broker: weighted jobs (on lanes), cancel control
(the control topic).

Consumer group: every tier consumer of every generator pod - whichever tiers the pod serves
(`IMAGEGEN_GENERATOR_TIERS`) - joins `<ns>.generator`. Kafka assigns each topic's
partitions only among the members subscribed to it, so the per-tier Deployments split
their own topic, KEDA reads the lag of (`<ns>.generator`, `jobs.<tier>`) per tier, and the
offsets committed by the all-tier generator carry over unchanged (a group per tier would
start from the earliest offset and redo a week of retained jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from imagegen.kafka import ConsumerLoop, Publisher
from imagegen.kafka.confluent import KafkaConsumer
from imagegen.kafka.lanes import LaneGroup, laned_loop
from imagegen.kafka.membership import instance_id
from imagegen.kafka.ports import Consumer
from imagegen.kafka.security import consumer_config
from imagegen.runtime import consumer_loop
from imagegen.settings import KafkaSettings
from schemas.topics import Tier
from services.generator.cancellation import CancelListener, CancelWatch
from services.generator.settings import BackendSettings
from services.generator.tiers import TierPicker, WeightedTierConsumer
from services.generator.worker import Generator

log = logging.getLogger(__name__)

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
        heartbeat_interval_ms=settings.heartbeat_ms(),
        fetch_wait_max_ms=settings.fetch_wait_max_ms,
        commit_interval_ms=settings.commit_interval_ms,
        # One consumer per tier in the same group: the tier keeps their ids apart.
        group_instance_id=instance_id(settings.instance_id, JOBS_GROUP, tier.value),
        extra={**consumer_config(settings), **_SMALL_PREFETCH},
        wakeup=settings.poll_wakeup,
    )


def jobs_loop(
    settings: KafkaSettings,
    config: BackendSettings,
    generator: Generator,
    publisher: Publisher,
    *,
    backoff_initial: float = 0.2,
    consumer_for: Callable[[Tier], Consumer] | None = None,
    poll_timeout: float | None = None,
) -> LaneGroup:
    """Images from this pod's tier topics (`IMAGEGEN_GENERATOR_TIERS`) in weighted tier order.

    `consumer_for` builds one tier's consumer (default: a member of `<ns>.generator` on the
    real broker); a tier this pod does not serve gets no consumer, so none of its records
    is ever fetched here. `poll_timeout` (default: the settings' poll timeout) bounds each
    lane's and each tier's poll.
    """
    topics = settings.topics
    wait = settings.poll_timeout_ms / 1000 if poll_timeout is None else poll_timeout
    tiers = config.tier_list()
    make = consumer_for or (lambda tier: tier_consumer(settings, tier))
    weighted = WeightedTierConsumer(
        {tier: make(tier) for tier in tiers},
        {tier: topics.jobs(tier) for tier in tiers},
        TierPicker.from_settings(config.tier_weights, config.tier_min_share, tiers),
        tier_poll_s=wait,
    )
    lanes = lanes_for(
        config,
        batches=generator.batches,
        self_hosted=generator.self_hosted,
        hosted=generator.hosted,
    )
    generator.batcher.capacity = lanes
    log.info(
        "event=jobs_loop tiers=%s lanes=%d hosted_concurrency=%d",
        ",".join(t.value for t in tiers),
        lanes,
        config.hosted_concurrency if generator.hosted else 0,
    )
    return laned_loop(
        "generator",
        weighted,
        {topics.jobs(tier): generator.on_job for tier in tiers},
        lanes,
        dead_letters=publisher,
        dead_letter_topic=topics.dead_letter,
        backoff_initial=backoff_initial,
        poll_timeout=wait,
    )


def lanes_for(
    config: BackendSettings, *, batches: bool = True, self_hosted: bool = True, hosted: bool = False
) -> int:
    """Images handled at once: GPU lanes (one batch running, the next one gathering) plus
    `hosted_concurrency` lanes for hosted API images, which only wait on HTTP."""
    gpu = 0
    if self_hosted:
        gpu = 1 if not batches or config.batch_max_size <= 1 else 2 * config.batch_max_size
    return max(1, gpu + (config.hosted_concurrency if hosted else 0))


def control_loop(settings: KafkaSettings, watch: CancelWatch, publisher: Publisher) -> ConsumerLoop:
    """`job_cancelled` from the control topic (cancels only, not every event) into the
    generator's schema."""
    return consumer_loop(
        settings,
        CONTROL_GROUP,
        {settings.topics.control: CancelListener(watch).on_event},
        publisher,
    )
