"""Pruning the job tracker's `applied_events` on real PostgreSQL: old ids go, in batches,
and a redelivery within the retention is still recognised."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from pydantic import ValidationError

from imagegen.db import create_pool, migrate
from imagegen.kafka import Record, encode
from imagegen.retention import AgePruner, prune_batch
from schemas.events import (
    GenerationCompleted,
    GenerationQueued,
)
from services.storage.cleanup import applied_events_pruner
from services.storage.jobs import JobTracker
from services.storage.migrations import MIGRATIONS
from services.storage.settings import StorageSettings, replay_window_s
from tests.unit.storage.test_jobs import completed as completed_event
from tests.unit.storage.test_jobs import queued

DAY = timedelta(days=1)
RETENTION = timedelta(days=30)


async def _deliver(tracker: JobTracker, event: GenerationQueued | GenerationCompleted) -> None:
    record = Record(topic="events", partition=0, offset=0, key=None, value=encode(event))
    await tracker.on_event(record)


async def _insert_ids(storage_pool: asyncpg.Pool, applied: dict[str, datetime]) -> None:
    await storage_pool.executemany(
        "INSERT INTO applied_events (event_id, applied_at) VALUES ($1, $2)", list(applied.items())
    )


async def _ids(storage_pool: asyncpg.Pool) -> set[str]:
    return {r["event_id"] for r in await storage_pool.fetch("SELECT event_id FROM applied_events")}


def _pruner(
    storage_pool: asyncpg.Pool, batch_size: int = 1000, interval_s: float = 60.0
) -> AgePruner:
    return applied_events_pruner(
        storage_pool, retention=RETENTION, batch_size=batch_size, interval_s=interval_s
    )


async def test_old_ids_are_pruned_and_recent_ones_kept(storage_pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    old = {f"old-{i}": now - RETENTION - timedelta(minutes=i + 1) for i in range(5)}
    recent = {
        "just-inside": now - RETENTION + timedelta(minutes=1),
        "yesterday": now - DAY,
        "now": now,
    }
    await _insert_ids(storage_pool, old | recent)

    assert await _pruner(storage_pool).prune(now=now) == len(old)
    assert await _ids(storage_pool) == set(recent)
    assert await _pruner(storage_pool).prune(now=now) == 0  # nothing more to do


async def test_a_redelivery_within_the_retention_is_still_recognised(
    storage_pool: asyncpg.Pool,
) -> None:
    tracker = JobTracker(storage_pool)
    completed = completed_event("j1", 0, 1, 0)
    await _deliver(tracker, queued("j1", 0, 1, 0, count=1))
    await _deliver(tracker, completed)

    async def cost() -> Decimal:
        value: Decimal = await storage_pool.fetchval(
            "SELECT cost_usd FROM generation_job_images WHERE job_id = 'j1'"
        )
        return value

    assert await cost() == Decimal("0.03")

    # A day short of the retention: the ids stay, and the redelivered completion (a
    # re-driven dead letter, say) is not counted again.
    assert await _pruner(storage_pool).prune(now=datetime.now(UTC) + RETENTION - DAY) == 0
    await _deliver(tracker, completed)
    assert await cost() == Decimal("0.03")

    # Past the retention the ids are gone: a copy arriving now would be applied again,
    # which is why the retention must outlast every way a copy can come back.
    assert await _pruner(storage_pool).prune(now=datetime.now(UTC) + RETENTION + DAY) == 2
    assert await _ids(storage_pool) == set()
    await _deliver(tracker, completed)
    assert await cost() == Decimal("0.06")


async def test_a_batch_deletes_at_most_batch_size_rows_oldest_first(
    storage_pool: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    old = {f"old-{i:02d}": now - RETENTION - timedelta(hours=i + 1) for i in range(10)}
    await _insert_ids(storage_pool, old | {"recent": now})
    cutoff = now - RETENTION

    assert await prune_batch(storage_pool, "applied_events", "applied_at", cutoff, 3) == 3
    # The three oldest went (old-09 is the oldest).
    assert await _ids(storage_pool) == {f"old-{i:02d}" for i in range(7)} | {"recent"}

    # The pruner works through the rest in batches of 3 (3 + 3 + 1) and stops there.
    assert await _pruner(storage_pool, batch_size=3).prune(now=now) == 7
    assert await _ids(storage_pool) == {"recent"}

    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        await prune_batch(storage_pool, "applied_events", "applied_at", cutoff, 0)
    with pytest.raises(ValueError, match="a positive batch size and interval"):
        _pruner(storage_pool, batch_size=0)


async def test_instances_pruning_at_once_share_the_rows(storage_pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    old = {f"old-{i}": now - RETENTION - timedelta(seconds=i + 1) for i in range(500)}
    await _insert_ids(storage_pool, old | {"recent": now})

    counts = await asyncio.gather(
        *(_pruner(storage_pool, batch_size=20).prune(now=now) for _ in range(3))
    )
    assert sum(counts) == len(old)  # every row deleted once, none twice
    assert await _ids(storage_pool) == {"recent"}


async def test_the_background_pruner_runs_every_interval_and_stops(
    storage_pool: asyncpg.Pool,
) -> None:
    pruner = _pruner(storage_pool, batch_size=2, interval_s=0.05)
    task = asyncio.create_task(pruner.run())
    try:
        now = datetime.now(UTC)
        # Inserted after the first round: only a later round can remove them.
        await asyncio.sleep(0.1)
        await _insert_ids(
            storage_pool, {"a": now - RETENTION - DAY, "b": now - 2 * RETENTION, "c": now}
        )
        async with asyncio.timeout(5):
            while await _ids(storage_pool) != {"c"}:
                await asyncio.sleep(0.02)
    finally:
        pruner.stop()
        async with asyncio.timeout(2):  # stops at once, not after its interval
            await task


async def test_rows_from_before_the_index_migration_are_pruned(database_url: str) -> None:
    storage_pool = await create_pool(database_url, "storage")
    try:
        before = [m for m in MIGRATIONS if m[0] < 5]
        await migrate(storage_pool, "storage", before)
        await storage_pool.execute("INSERT INTO applied_events (event_id) VALUES ('e-before')")
        await storage_pool.execute(
            "UPDATE applied_events SET applied_at = now() - interval '40 days'"
        )
        await migrate(storage_pool, "storage", MIGRATIONS)
        indexes = await storage_pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'applied_events'"
        )
        assert "applied_events_applied_at" in {r["indexname"] for r in indexes}
        assert await _pruner(storage_pool).prune() == 1
    finally:
        await storage_pool.close()


def test_retention_defaults_to_30_days_and_refuses_less_than_the_replay_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert StorageSettings().applied_events_retention_s == 30 * 24 * 3600
    # Events and dead-letter topics keep records 7 days each (schemas/topics.py).
    assert replay_window_s() == 14 * 24 * 3600

    monkeypatch.setenv("IMAGEGEN_APPLIED_EVENTS_RETENTION_S", str(14 * 24 * 3600))
    assert StorageSettings().applied_events_retention_s == 14 * 24 * 3600

    monkeypatch.setenv("IMAGEGEN_APPLIED_EVENTS_RETENTION_S", str(7 * 24 * 3600))
    with pytest.raises(ValidationError, match="IMAGEGEN_APPLIED_EVENTS_RETENTION_S=604800 is"):
        StorageSettings()
