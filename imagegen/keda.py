"""What KEDA's Kafka scaler would ask for, computed from a broker's own offsets.

The rules follow KEDA's `pkg/scalers/kafka_scaler.go` (read, not copied) for the settings a
ScaledObject's `kafka` trigger can carry, so a test on a real broker can check that a
backlog scales a tier up and a drained topic brings it back to its minimum:

- per partition, lag = the latest offset (ListOffsets, the high watermark) minus the
  group's committed offset; with no committed offset, `offsetResetPolicy=latest` counts 1
  and `earliest` the whole high watermark (0 for either with `scaleToZeroOnInvalidOffset`);
- the metric is the total lag, capped at partitions x `lagThreshold` unless
  `allowIdleConsumers` (`limitToPartitionsWithLag` caps at the partitions that have lag;
  `ensureEvenDistributionOfPartitions` rounds up to a factor of the partition count);
- the trigger is active when the uncapped total is above `activationLagThreshold`;
- the HPA wants ceil(metric / `lagThreshold`) pods (an AverageValue target), between
  min and max; an inactive trigger takes a ScaledObject with min 0 to zero pods.

Not modelled: the HPA's 10 % tolerance, stabilisation windows and scaling policies (they
delay a change, they do not change its target), `excludePersistentLag` (it remembers
offsets between polls) and `partitionLimitation`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml

from imagegen.errors import ConfigurationError

_TRY_S = 3.0
T = TypeVar("T")
_UNSUPPORTED = ("excludePersistentLag", "partitionLimitation")


def _flag(metadata: Mapping[str, Any], name: str) -> bool:
    return str(metadata.get(name, "false")).strip().lower() == "true"


@dataclass(frozen=True)
class KafkaTrigger:
    """One `kafka` trigger's metadata, with KEDA's defaults."""

    topic: str
    consumer_group: str
    lag_threshold: int = 10
    activation_lag_threshold: int = 0
    offset_reset_policy: str = "latest"
    allow_idle_consumers: bool = False
    scale_to_zero_on_invalid_offset: bool = False
    limit_to_partitions_with_lag: bool = False
    ensure_even_distribution: bool = False

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> KafkaTrigger:
        for name in _UNSUPPORTED:
            if _flag(metadata, name) or (name == "partitionLimitation" and name in metadata):
                raise ConfigurationError(f"kafka trigger: {name} is not modelled here")
        if "topic" not in metadata or "consumerGroup" not in metadata:
            raise ConfigurationError("kafka trigger: topic and consumerGroup are required")
        trigger = cls(
            topic=str(metadata["topic"]),
            consumer_group=str(metadata["consumerGroup"]),
            lag_threshold=int(metadata.get("lagThreshold", 10)),
            activation_lag_threshold=int(metadata.get("activationLagThreshold", 0)),
            offset_reset_policy=str(metadata.get("offsetResetPolicy", "latest")),
            allow_idle_consumers=_flag(metadata, "allowIdleConsumers"),
            scale_to_zero_on_invalid_offset=_flag(metadata, "scaleToZeroOnInvalidOffset"),
            limit_to_partitions_with_lag=_flag(metadata, "limitToPartitionsWithLag"),
            ensure_even_distribution=_flag(metadata, "ensureEvenDistributionOfPartitions"),
        )
        if trigger.lag_threshold <= 0 or trigger.activation_lag_threshold < 0:
            raise ConfigurationError("kafka trigger: lagThreshold > 0, activation >= 0")
        if trigger.offset_reset_policy not in ("latest", "earliest"):
            raise ConfigurationError("kafka trigger: offsetResetPolicy is latest or earliest")
        return trigger


@dataclass(frozen=True)
class ScaledObjectSpec:
    """The parts of a ScaledObject with one kafka trigger that decide its replica count."""

    name: str
    target: str
    min_replicas: int
    max_replicas: int
    trigger: KafkaTrigger


def scaled_objects(manifests: str) -> dict[str, ScaledObjectSpec]:
    """Every ScaledObject with a kafka trigger in a multi-document YAML, by name."""
    found: dict[str, ScaledObjectSpec] = {}
    for doc in yaml.safe_load_all(manifests):
        if not doc or doc.get("kind") != "ScaledObject":
            continue
        spec = doc["spec"]
        kafka = [t for t in spec.get("triggers", []) if t.get("type") == "kafka"]
        if len(kafka) != 1:
            raise ConfigurationError(f"{doc['metadata']['name']}: expected one kafka trigger")
        name = doc["metadata"]["name"]
        found[name] = ScaledObjectSpec(
            name=name,
            target=spec["scaleTargetRef"]["name"],
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            trigger=KafkaTrigger.from_metadata(kafka[0]["metadata"]),
        )
    return found


@dataclass(frozen=True)
class PartitionOffsets:
    committed: int | None
    """The group's committed offset; None when it has none."""
    latest: int
    """The high watermark (ListOffsets, latest)."""


def partition_lag(offsets: PartitionOffsets, trigger: KafkaTrigger) -> int:
    if offsets.committed is None:
        if trigger.scale_to_zero_on_invalid_offset:
            return 0
        return 1 if trigger.offset_reset_policy == "latest" else offsets.latest
    return offsets.latest - offsets.committed


def total_lag(offsets: Mapping[int, PartitionOffsets], trigger: KafkaTrigger) -> tuple[int, int]:
    """(the metric KEDA reports, the uncapped total that decides activity)."""
    lags = [partition_lag(o, trigger) for o in offsets.values()]
    total = sum(lags)
    metric = total
    if (
        not trigger.allow_idle_consumers
        or trigger.limit_to_partitions_with_lag
        or trigger.ensure_even_distribution
    ):
        bound = len(lags)
        threshold = trigger.lag_threshold
        if trigger.ensure_even_distribution:
            factors = [f for f in range(1, bound + 1) if bound % f == 0]
            metric = next((f for f in factors if f * threshold >= total), bound) * threshold
        if trigger.limit_to_partitions_with_lag:
            bound = sum(1 for lag in lags if lag > 0)
        if metric // threshold > bound:  # integer division, as KEDA's int64 arithmetic
            metric = bound * threshold
    return metric, total


@dataclass(frozen=True)
class Scale:
    lags: dict[int, int]
    total_lag: int
    metric: int
    active: bool
    replicas: int


def desired_replicas(scaled: ScaledObjectSpec, metric: int, active: bool) -> int:
    """Pods the HPA converges to for this metric (KEDA takes an inactive min-0 target to 0)."""
    if not active and scaled.min_replicas == 0:
        return 0
    wanted = math.ceil(metric / scaled.trigger.lag_threshold)
    return max(scaled.min_replicas, 1 if active else 0, min(wanted, scaled.max_replicas))


def evaluate(scaled: ScaledObjectSpec, offsets: Mapping[int, PartitionOffsets]) -> Scale:
    trigger = scaled.trigger
    metric, total = total_lag(offsets, trigger)
    active = total > trigger.activation_lag_threshold
    return Scale(
        lags={p: partition_lag(o, trigger) for p, o in sorted(offsets.items())},
        total_lag=total,
        metric=metric,
        active=active,
        replicas=desired_replicas(scaled, metric, active),
    )


def _until(deadline: float, ask: Callable[[float], T]) -> T:
    """`ask(timeout)` again with short timeouts until it answers or `deadline` passes.

    KEDA asks again on its next poll; a test asks at once after creating a topic or a
    group, when Kafka may still answer UNKNOWN_TOPIC_OR_PART (metadata not yet on the
    broker) or let librdkafka's first OffsetFetch (which creates `__consumer_offsets`)
    wait out its whole timeout instead of retrying (seen on Kafka 4.1.1).
    """
    from confluent_kafka import KafkaException

    while True:
        per_try = max(0.5, min(_TRY_S, deadline - time.monotonic()))
        try:
            return ask(per_try)
        except (KafkaException, FutureTimeout, _NotYet):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


class _NotYet(Exception):
    pass


def read_offsets(
    bootstrap: str,
    trigger: KafkaTrigger,
    client_config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> dict[int, PartitionOffsets]:
    """The topic's high watermarks and the group's committed offsets, asked of the broker as
    KEDA does: partitions from metadata, OffsetFetch for the group, ListOffsets(latest)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported for mypy

    admin = AdminClient({"bootstrap.servers": bootstrap, **(client_config or {})})
    deadline = time.monotonic() + timeout
    topic = trigger.topic

    def partitions(per_try: float) -> list[int]:
        metadata = admin.list_topics(topic, timeout=per_try).topics[topic]
        if metadata.error is not None:
            raise _NotYet(f"topic {topic}: {metadata.error}")
        return sorted(metadata.partitions)

    wanted = [TopicPartition(topic, p) for p in _until(deadline, partitions)]

    def committed(per_try: float) -> dict[int, int | None]:
        request = [ConsumerGroupTopicPartitions(trigger.consumer_group, wanted)]
        group = admin.list_consumer_group_offsets(request, request_timeout=per_try)
        answer = group[trigger.consumer_group].result(per_try + 1)
        return {
            tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in answer.topic_partitions
        }

    def latest(per_try: float) -> dict[int, int]:
        newest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        asked = admin.list_offsets({tp: newest for tp in wanted}, request_timeout=per_try)
        return {tp.partition: f.result(per_try + 1).offset for tp, f in asked.items()}

    group_offsets = _until(deadline, committed)
    watermarks = _until(deadline, latest)
    return {
        tp.partition: PartitionOffsets(group_offsets.get(tp.partition), watermarks[tp.partition])
        for tp in wanted
    }


def keda_view(
    bootstrap: str, scaled: ScaledObjectSpec, client_config: Mapping[str, str] | None = None
) -> Scale:
    """What KEDA would decide for `scaled` now, from the broker at `bootstrap`."""
    return evaluate(scaled, read_offsets(bootstrap, scaled.trigger, client_config))
