"""Provider health: the breaker's rules with a hand-driven clock, then through the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas.jobs import GenerateImage
from services.scheduler import provider_health
from services.scheduler.provider_health import ProviderHealth, reorder
from tests.unit.scheduler.fakes import catalogue_json, fast_settings
from tests.unit.scheduler.memrig import memory_rig, pack


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Counter:
    adds: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def add(self, amount: int, attributes: dict[str, Any]) -> None:
        self.adds.append((amount, attributes))


@pytest.fixture
def cooldowns(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter = Counter()

    @dataclass
    class Instruments:
        provider_unavailable: Counter

    monkeypatch.setattr(provider_health, "instruments", lambda: Instruments(counter))
    return counter


def test_consecutive_retryable_failures_open_the_breaker_for_the_cooldown(
    cooldowns: Counter,
) -> None:
    clock = Clock()
    health = ProviderHealth(3, 60, clock=clock)
    assert not health.failure("replicate", retryable=True)
    assert not health.failure("replicate", retryable=True)
    assert not health.cooling("replicate")
    assert health.failure("replicate", retryable=True)
    assert health.cooling("replicate") and health.cooling_down() == {"replicate"}
    assert cooldowns.adds == [(1, {"provider": "replicate"})]
    # Late failures of attempts sent before the cut-off neither extend nor re-count it.
    clock.now += 30
    assert not health.failure("replicate", retryable=True)
    clock.now += 30
    assert not health.cooling("replicate")
    assert cooldowns.adds == [(1, {"provider": "replicate"})]


def test_after_the_cooldown_one_failure_reopens_and_a_success_closes(cooldowns: Counter) -> None:
    clock = Clock()
    health = ProviderHealth(3, 10, clock=clock)
    for _ in range(3):
        health.failure("fal", retryable=True)
    clock.now += 11
    assert not health.cooling("fal")
    assert health.failure("fal", retryable=True)  # half-open: straight back out
    assert health.cooling("fal")
    health.success("fal")
    assert not health.cooling("fal")
    # Closed: it takes the full threshold again.
    assert not health.failure("fal", retryable=True)
    assert not health.failure("fal", retryable=True)
    assert health.failure("fal", retryable=True)
    assert len(cooldowns.adds) == 3


def test_a_success_resets_the_count_and_permanent_failures_do_not_count(
    cooldowns: Counter,
) -> None:
    health = ProviderHealth(2, 60, clock=Clock())
    health.failure("runpod", retryable=True)
    health.success("runpod")
    health.failure("runpod", retryable=True)
    for _ in range(5):
        health.failure("runpod", retryable=False)  # refused prompts say nothing of health
    assert not health.cooling("runpod")
    health.failure("other", retryable=True)
    assert not health.cooling("runpod") and not health.cooling("other")
    assert cooldowns.adds == []


def test_a_redelivered_event_counts_once(cooldowns: Counter) -> None:
    health = ProviderHealth(2, 60, clock=Clock())
    health.failure("replicate", retryable=True, event_id="e1")
    health.failure("replicate", retryable=True, event_id="e1")
    assert not health.cooling("replicate")
    health.failure("replicate", retryable=True, event_id="e2")
    assert health.cooling("replicate")


def test_threshold_zero_disables_the_breaker(cooldowns: Counter) -> None:
    health = ProviderHealth(0, 60, clock=Clock())
    for _ in range(10):
        assert not health.failure("replicate", retryable=True)
    assert health.cooling_down() == frozenset()


def test_order_moves_cooling_providers_last_and_keeps_everything(cooldowns: Counter) -> None:
    health = ProviderHealth(1, 60, clock=Clock())
    chain = ["replicate", "fal", "runpod", "replicate-2"]
    assert health.order(chain, str) == chain
    health.failure("replicate", retryable=True)
    health.failure("runpod", retryable=True)
    assert health.order(chain, str) == ["fal", "replicate-2", "replicate", "runpod"]
    # Every offer cooling down: the chain as it is, never an empty one.
    assert reorder(["a", "b"], str, frozenset({"a", "b"})) == ["a", "b"]


async def test_scheduler_skips_a_cooling_provider_for_new_work_and_fails_over_at_once(
    database_url: str, cooldowns: Counter
) -> None:
    settings = fast_settings(
        catalogue=catalogue_json(("flaky", "1.00", "high"), ("steady", "2.00", "high")),
        retry_backoff_s=0.01,
        max_attempts=3,
        provider_failure_threshold=2,
        provider_cooldown_s=300,
    )

    def policy(job: GenerateImage) -> str:
        return "fail" if job.provider == "flaky" else "ok"

    async with memory_rig(database_url, settings, policy) as m:  # type: ignore[arg-type]
        first = pack(1)
        await m.rig.submit(first, "alice")
        await m.rig.wait_event("pack_completed", first.job_id)
        attempts = [(j.image.attempt, j.provider) for j in await m.rig.jobs()]
        # Two retryable failures open flaky's breaker: the third attempt it would have had
        # goes to steady straight away.
        assert attempts == [(1, "flaky"), (2, "flaky"), (3, "steady")]
        assert m.rig.scheduler.health.cooling_down() == {"flaky"}
        assert cooldowns.adds == [(1, {"provider": "flaky"})]

        second = pack(1)
        await m.rig.submit(second, "alice")
        await m.rig.wait_event("pack_completed", second.job_id)
        jobs = [j for j in await m.rig.jobs() if j.image.job_id == second.job_id]
        # Cheaper flaky is cooling down: the new image's choice is steady, at steady's price.
        assert [(j.image.attempt, j.provider) for j in jobs] == [(1, "steady")]
        assert jobs[0].estimated_cost_usd == 2.0
