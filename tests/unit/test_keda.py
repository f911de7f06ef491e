"""KEDA's Kafka-scaler arithmetic (imagegen/keda.py) on hand-made offsets, and the committed
ScaledObjects read back from deploy/k8s."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from imagegen.errors import ConfigurationError
from imagegen.k8s_generators import TIERS_FILE, deployment_name, tier_partitions
from imagegen.keda import (
    KafkaTrigger,
    PartitionOffsets,
    ScaledObjectSpec,
    evaluate,
    scaled_objects,
    total_lag,
)
from schemas.topics import Tier, TopicNames

REPO = Path(__file__).resolve().parents[2]


def _scaled(min_: int = 0, max_: int = 8, **trigger: object) -> ScaledObjectSpec:
    base = KafkaTrigger(topic="t", consumer_group="g", lag_threshold=10)
    return ScaledObjectSpec("so", "dep", min_, max_, replace(base, **trigger))  # type: ignore[arg-type]


def _offsets(*pairs: tuple[int | None, int]) -> dict[int, PartitionOffsets]:
    return {i: PartitionOffsets(c, latest) for i, (c, latest) in enumerate(pairs)}


def test_no_committed_offset_counts_one_for_latest_and_the_watermark_for_earliest() -> None:
    offsets = _offsets((None, 25), (None, 0), (5, 9))
    assert evaluate(_scaled(offset_reset_policy="latest"), offsets).lags == {0: 1, 1: 1, 2: 4}
    assert evaluate(_scaled(offset_reset_policy="earliest"), offsets).lags == {0: 25, 1: 0, 2: 4}
    zero = _scaled(offset_reset_policy="earliest", scale_to_zero_on_invalid_offset=True)
    assert evaluate(zero, offsets).lags == {0: 0, 1: 0, 2: 4}


def test_total_is_capped_at_partitions_times_threshold_unless_idle_consumers_allowed() -> None:
    offsets = _offsets((0, 100), (0, 100))  # 200 waiting on 2 partitions, threshold 10
    assert total_lag(offsets, _scaled().trigger) == (20, 200)
    assert total_lag(offsets, _scaled(allow_idle_consumers=True).trigger) == (200, 200)
    assert evaluate(_scaled(), offsets).replicas == 2
    assert evaluate(_scaled(allow_idle_consumers=True), offsets).replicas == 8  # max


def test_cap_uses_integer_division_like_keda() -> None:
    # 2 partitions, threshold 10: 29 // 10 = 2 is not above 2, so 29 stands (3 pods wanted).
    offsets = _offsets((0, 29), (0, 0))
    assert total_lag(offsets, _scaled().trigger) == (29, 29)
    # ...so the HPA asks ceil(29 / 10) = 3 pods for 2 partitions; only max clamps it.
    assert evaluate(_scaled(), offsets).replicas == 3
    assert evaluate(_scaled(max_=2), offsets).replicas == 2


def test_limit_to_partitions_with_lag_and_even_distribution() -> None:
    offsets = _offsets(*([(0, 50)] + [(0, 0)] * 5))  # 6 partitions, one with 50
    assert total_lag(offsets, _scaled(limit_to_partitions_with_lag=True).trigger)[0] == 10
    # 50 / 10 = 5 pods would split 6 partitions unevenly: the next factor of 6 is 6.
    assert total_lag(offsets, _scaled(ensure_even_distribution=True).trigger)[0] == 60


def test_replicas_clamped_and_activation() -> None:
    idle = _offsets((3, 3), (7, 7))
    assert evaluate(_scaled(min_=0), idle).replicas == 0
    assert evaluate(_scaled(min_=1), idle).replicas == 1
    one = _offsets((3, 4), (7, 7))
    woke = evaluate(_scaled(min_=0), one)
    assert woke.active and woke.replicas == 1  # one message wakes a tier at zero
    quiet = evaluate(_scaled(min_=0, activation_lag_threshold=5), one)
    assert not quiet.active and quiet.replicas == 0
    assert evaluate(_scaled(min_=0, max_=3), _offsets(*[(0, 40)] * 4)).replicas == 3


def test_unmodelled_or_invalid_metadata_is_refused() -> None:
    base = {"topic": "t", "consumerGroup": "g"}
    with pytest.raises(ConfigurationError):
        KafkaTrigger.from_metadata({**base, "excludePersistentLag": "true"})
    with pytest.raises(ConfigurationError):
        KafkaTrigger.from_metadata({**base, "lagThreshold": "0"})
    with pytest.raises(ConfigurationError):
        KafkaTrigger.from_metadata({"topic": "t"})
    assert KafkaTrigger.from_metadata(base).offset_reset_policy == "latest"  # KEDA's default


def test_committed_scaledobjects_read_back() -> None:
    found = scaled_objects((REPO / TIERS_FILE).read_text())
    partitions = tier_partitions()
    for tier in Tier:
        so = found[deployment_name(tier)]
        assert so.target == deployment_name(tier)
        assert so.trigger.topic == TopicNames().jobs(tier)
        assert so.max_replicas == partitions[tier]
        assert so.trigger.offset_reset_policy == "earliest"
    assert found[deployment_name(Tier.ECONOMY)].min_replicas == 0
