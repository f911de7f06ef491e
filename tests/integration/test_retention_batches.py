"""`imagegen.retention.AgePruner` on real PostgreSQL, on the generator's `cancelled_jobs`
(the table the control topic's cancels land in): batches go oldest first, instances
pruning at once share the rows, the background pruner runs each interval and stops at once.
(These checks ran on storage's `applied_events` until storage stopped mirroring job state.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from imagegen.db import create_pool, migrate
from imagegen.retention import AgePruner, prune_batch
from services.generator.migrations import MIGRATIONS, SCHEMA

DAY = timedelta(days=1)
KEEP = timedelta(days=14)
TABLE, COLUMN = "cancelled_jobs", "cancelled_at"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    opened = await create_pool(database_url, SCHEMA)
    try:
        await migrate(opened, SCHEMA, MIGRATIONS)
        yield opened
    finally:
        await opened.close()


async def _insert(pool: asyncpg.Pool, rows: dict[str, datetime]) -> None:
    await pool.executemany(
        f"INSERT INTO {TABLE} (job_id, {COLUMN}) VALUES ($1, $2)", list(rows.items())
    )


async def _ids(pool: asyncpg.Pool) -> set[str]:
    return {r["job_id"] for r in await pool.fetch(f"SELECT job_id FROM {TABLE}")}


def _pruner(pool: asyncpg.Pool, batch_size: int = 1000, interval_s: float = 60.0) -> AgePruner:
    return AgePruner(pool, TABLE, COLUMN, keep=KEEP, batch_size=batch_size, interval_s=interval_s)


async def test_old_rows_go_and_recent_ones_stay(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    old = {f"old-{i}": now - KEEP - timedelta(minutes=i + 1) for i in range(5)}
    recent = {"just-inside": now - KEEP + timedelta(minutes=1), "yesterday": now - DAY, "now": now}
    await _insert(pool, old | recent)

    assert await _pruner(pool).prune(now=now) == len(old)
    assert await _ids(pool) == set(recent)
    assert await _pruner(pool).prune(now=now) == 0  # nothing more to do


async def test_a_batch_deletes_at_most_batch_size_rows_oldest_first(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    old = {f"old-{i:02d}": now - KEEP - timedelta(hours=i + 1) for i in range(10)}
    await _insert(pool, old | {"recent": now})
    cutoff = now - KEEP

    assert await prune_batch(pool, TABLE, COLUMN, cutoff, 3) == 3
    # The three oldest went (old-09 is the oldest).
    assert await _ids(pool) == {f"old-{i:02d}" for i in range(7)} | {"recent"}

    # The pruner works through the rest in batches of 3 (3 + 3 + 1) and stops there.
    assert await _pruner(pool, batch_size=3).prune(now=now) == 7
    assert await _ids(pool) == {"recent"}

    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        await prune_batch(pool, TABLE, COLUMN, cutoff, 0)
    with pytest.raises(ValueError, match="a positive batch size and interval"):
        _pruner(pool, batch_size=0)


async def test_instances_pruning_at_once_share_the_rows(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    old = {f"old-{i}": now - KEEP - timedelta(seconds=i + 1) for i in range(500)}
    await _insert(pool, old | {"recent": now})

    counts = await asyncio.gather(*(_pruner(pool, batch_size=20).prune(now=now) for _ in range(3)))
    assert sum(counts) == len(old)  # every row deleted once, none twice
    assert await _ids(pool) == {"recent"}


async def test_the_background_pruner_runs_every_interval_and_stops(pool: asyncpg.Pool) -> None:
    pruner = _pruner(pool, batch_size=2, interval_s=0.05)
    task = asyncio.create_task(pruner.run())
    try:
        now = datetime.now(UTC)
        # Inserted after the first round: only a later round can remove them.
        await asyncio.sleep(0.1)
        await _insert(pool, {"a": now - KEEP - DAY, "b": now - 2 * KEEP, "c": now})
        async with asyncio.timeout(5):
            while await _ids(pool) != {"c"}:
                await asyncio.sleep(0.02)
    finally:
        pruner.stop()
        async with asyncio.timeout(2):  # stops at once, not after its interval
            await task
