"""Lag as KEDA sees it, on Apache Kafka: a backlog on a tier's jobs topic scales that tier's
generator Deployment up, and a drained topic takes it back to its minimum.

The ScaledObjects are read from the committed manifests (deploy/k8s/generator-tiers);
the test only points their trigger at this test's topic namespace. Lag is computed by
imagegen/keda.py from the broker's own offsets (ListOffsets, OffsetFetch), as KEDA's
Kafka scaler does; the test checks it against what it produced and consumed itself.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from imagegen.k8s_generators import GENERATOR_GROUP, TIERS_FILE, deployment_name
from imagegen.keda import ScaledObjectSpec, keda_view, scaled_objects
from schemas.topics import DEFAULT_NAMESPACE, Tier, TopicNames

REPO = Path(__file__).resolve().parents[3]


def _committed_scaledobject(tier: Tier, namespace: str) -> ScaledObjectSpec:
    scaled = scaled_objects((REPO / TIERS_FILE).read_text())[deployment_name(tier)]
    # The manifest names the production topic and group; the test runs in its own namespace.
    assert scaled.trigger.topic == TopicNames(DEFAULT_NAMESPACE).jobs(tier)
    assert scaled.trigger.consumer_group == f"{DEFAULT_NAMESPACE}.{GENERATOR_GROUP}"
    trigger = replace(
        scaled.trigger,
        topic=TopicNames(namespace).jobs(tier),
        consumer_group=f"{namespace}.{GENERATOR_GROUP}",
    )
    return replace(scaled, trigger=trigger)


def _produce(bootstrap: str, topic: str, count: int) -> Counter[int]:
    """`count` jobs keyed by job id, as the scheduler writes them; per partition, how many."""
    per_partition: Counter[int] = Counter()

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        per_partition[msg.partition()] += 1  # type: ignore[attr-defined]

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for _ in range(count):
        producer.produce(topic, key=str(uuid.uuid4()), value=b"{}", on_delivery=delivered)
    assert producer.flush(30) == 0
    return per_partition


def _consume(bootstrap: str, group: str, topic: str, count: int) -> Counter[int]:
    """Consume exactly `count` records as the group and commit them; per partition, how many."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    taken: Counter[int] = Counter()
    try:
        consumer.subscribe([topic])
        while sum(taken.values()) < count:
            msg = consumer.poll(10)
            assert msg is not None, f"only {sum(taken.values())} of {count} consumed"
            assert msg.error() is None, msg.error()
            partition = msg.partition()
            assert partition is not None
            taken[partition] += 1
            if sum(taken.values()) == count:
                break
        # Commits what was handed to us (the stored offsets), not what was prefetched.
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return taken


@pytest.mark.parametrize("tier", list(Tier), ids=[t.value for t in Tier])
def test_tier_scales_up_under_backlog_and_back_to_its_minimum_when_drained(
    tier: Tier, kafka_bootstrap: str, topic_namespace: str
) -> None:
    scaled = _committed_scaledobject(tier, topic_namespace)
    trigger = scaled.trigger
    threshold, partitions = trigger.lag_threshold, scaled.max_replicas
    floor = scaled.min_replicas

    # Nothing produced, no group yet: no lag, the tier sits at its minimum.
    empty = keda_view(kafka_bootstrap, scaled)
    assert (empty.total_lag, empty.active, empty.replicas) == (0, False, floor)

    # A backlog of twice what max pods are meant to hold, before the group ever committed:
    # `offsetResetPolicy: earliest` counts each partition's whole watermark.
    backlog = 2 * partitions * threshold + 3
    produced = _produce(kafka_bootstrap, trigger.topic, backlog)
    view = keda_view(kafka_bootstrap, scaled)
    assert view.lags == {p: produced[p] for p in range(partitions)}
    assert view.total_lag == backlog and view.active
    assert view.metric == partitions * threshold  # capped: one pod per partition at most
    assert view.replicas == scaled.max_replicas

    # The group works through most of it: lag = watermark - committed offset, per partition.
    left = 3 * threshold - 1
    taken = _consume(kafka_bootstrap, trigger.consumer_group, trigger.topic, backlog - left)
    view = keda_view(kafka_bootstrap, scaled)
    assert view.lags == {p: produced[p] - taken[p] for p in range(partitions)}
    assert view.total_lag == view.metric == left
    assert view.replicas == max(floor, math.ceil(left / threshold)) == 3

    # Drained and committed: back to the minimum (economy: zero pods, inactive).
    _consume(kafka_bootstrap, trigger.consumer_group, trigger.topic, left)
    drained = keda_view(kafka_bootstrap, scaled)
    assert drained.lags == dict.fromkeys(range(partitions), 0)
    assert (drained.total_lag, drained.active, drained.replicas) == (0, False, floor)

    # One new job is above `activationLagThreshold: 0`: a tier at zero wakes with one pod.
    _produce(kafka_bootstrap, trigger.topic, 1)
    woken = keda_view(kafka_bootstrap, scaled)
    assert (woken.total_lag, woken.active, woken.replicas) == (1, True, max(floor, 1))
