"""Aggregation, deduplication, late and bad events: the pure pipeline over a MemoryStore."""

from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest

from services.analytics.memory import MemoryStore
from services.analytics.pipeline import apply
from services.analytics.queries import kpis, window_counts
from services.analytics.windows import HOUR, MINUTE, SECONDS_BUCKETS, encode, quantile
from tests.unit.analytics.events_factory import BASE, encoded, job_events


def _run(records: list[bytes], store: MemoryStore | None = None) -> MemoryStore:
    store = store or MemoryStore()
    for raw in records:
        apply(store, raw, BASE.timestamp())
    return store


def _workload() -> list[list[bytes]]:
    return [
        encoded(job_events("j1", "alice", "realtime", images=3, fail={2})),
        encoded(job_events("j2", "bob", "economy", images=2, cost=0.05, flagged={0})),
        encoded(job_events("j3", "alice", "standard", images=1, provider="fal", model="flux")),
    ]


def test_counts_success_rate_cost_and_users() -> None:
    store = _run([r for job in _workload() for r in job])
    total = kpis(store.totals)
    assert (total["requested"], total["completed"], total["failed"]) == (6, 5, 1)
    assert total["failed_by_error_type"] == {"ProviderTimeout": 1}
    assert total["success_rate"] == pytest.approx(5 / 6)
    assert total["spend_usd"] == pytest.approx(0.02 * 2 + 0.05 * 2 + 0.02)
    by_provider = {(r["provider"], r["model"]): r for r in total["cost"]}
    assert by_provider[("demo", "demo-model")]["images"] == 4
    assert by_provider[("fal", "flux")]["cost_per_image_usd"] == pytest.approx(0.02)
    users = {u["user"]: u for u in total["users"]}
    assert (users["alice"]["requested"], users["alice"]["completed"]) == (4, 3)
    assert users["bob"]["spend_usd"] == pytest.approx(0.10)
    assert total["consistency"]["flagged"] == 1
    assert total["consistency"]["pass_rate"] == pytest.approx(4 / 5)
    tiers = {row["tier"]: row for row in total["time_to_first_image"]}
    assert set(tiers) == {"realtime", "economy", "standard"}
    assert tiers["realtime"]["count"] == 1  # only the job's first image_stored counts
    assert tiers["realtime"]["mean"] == pytest.approx(8.0)  # queued at 0, stored at 3+4+1
    assert {r["tier"] for r in total["queue_wait"]} == {"realtime", "economy", "standard"}
    assert total["jobs_started"] == 3 and total["jobs_ended"] == 3


def test_a_redelivered_event_counts_once() -> None:
    once = _run([r for job in _workload() for r in job])
    records = [r for job in _workload() for r in job]
    twice = _run([r for raw in records for r in (raw, raw)])
    without = {k: v for k, v in twice.totals.items() if not k.startswith("duplicates")}
    assert without == dict(once.totals)
    assert twice.totals[encode("duplicates", {})] == len(records)
    for name in (MINUTE.name, HOUR.name):
        dup_free = {
            k: v for k, v in twice.windows[name].items() if not k[0].startswith("duplicates")
        }
        assert dup_free == dict(once.windows[name])


def test_interleaving_of_jobs_does_not_change_any_count() -> None:
    """Partitions are read in any order; one job's events stay in order (same key)."""
    reference = _run([r for job in _workload() for r in job])
    rng = random.Random(7)
    for _ in range(5):
        queues = [list(job) for job in _workload()]
        merged = []
        while any(queues):
            queue = rng.choice([q for q in queues if q])
            merged.append(queue.pop(0))
        store = _run(merged)
        assert store.windows == reference.windows
        assert store.totals == reference.totals


def test_a_late_event_lands_in_its_own_minute_window() -> None:
    store = _run(encoded(job_events("j1", "alice", "realtime", images=1)))
    late = job_events("late", "bob", "economy", images=1, start=BASE - timedelta(minutes=30))
    _run(encoded(late), store)  # arrives after j1's events, stamped half an hour earlier
    minutes = window_counts(store, MINUTE.name)
    late_start = (BASE - timedelta(minutes=30)).timestamp()
    assert kpis(minutes[late_start])["completed"] == 1
    assert kpis(minutes[BASE.timestamp()])["requested"] == 1
    assert sum(kpis(values)["completed"] for values in minutes.values()) == 2
    hours = window_counts(store, HOUR.name)
    # Each event is in the 4 hopping windows that cover it (one hour, every 15 minutes).
    assert sum(kpis(values)["completed"] for values in hours.values()) == 2 * 4


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b'{"type": "generation_queued", "id": "x"}', "malformed"),
        (json.dumps({"type": "telepathy_started", "id": "x"}).encode(), "unknown"),
        (None, "malformed"),
    ],
)
def test_bad_records_are_counted_and_skipped(raw: bytes | None, reason: str) -> None:
    store = MemoryStore()
    assert apply(store, raw, BASE.timestamp()) == reason
    events = encoded(job_events("j1", "alice", "realtime", images=1))
    assert [apply(store, r, BASE.timestamp()) for r in events] == ["counted"] * len(events)
    total = kpis(store.totals)
    assert total["rejected"] == {reason: 1}
    assert total["completed"] == 1


def test_quantiles_from_buckets() -> None:
    counts = [0] * (len(SECONDS_BUCKETS) + 1)
    counts[SECONDS_BUCKETS.index(5)] = 10  # ten observations in (2, 5]
    assert quantile(0.5, SECONDS_BUCKETS, counts) == pytest.approx(3.5)
    assert quantile(0.95, SECONDS_BUCKETS, counts) == pytest.approx(4.85)
    assert quantile(0.5, SECONDS_BUCKETS, [0] * len(counts)) is None
    counts[-1] = 100  # past the last bound: its lower bound
    assert quantile(0.99, SECONDS_BUCKETS, counts) == SECONDS_BUCKETS[-1]
