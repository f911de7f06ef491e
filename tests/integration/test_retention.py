"""Age-based pruning of each service's bookkeeping tables, on real PostgreSQL: what is old
enough goes, what a copy could still need stays (applied_events: test_storage_applied_events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from imagegen.db import create_pool, migrate
from imagegen.retention import REPLAY_WINDOW, AgePruner, pruning
from services.gateway.migrations import MIGRATIONS as GATEWAY_MIGRATIONS
from services.generator.cancellation import PgCancellationStore
from services.generator.migrations import MIGRATIONS as GENERATOR_MIGRATIONS
from services.postprocess.variations import MIGRATIONS as VARIATION_MIGRATIONS
from services.postprocess.variations import variations_pruner

DAY = timedelta(days=1)
OpenPool = Callable[[str, list[tuple[int, str]]], Awaitable[asyncpg.Pool]]


@pytest.fixture
async def open_pool(database_url: str) -> AsyncIterator[OpenPool]:
    pools: list[asyncpg.Pool] = []

    async def open_(schema: str, migrations: list[tuple[int, str]]) -> asyncpg.Pool:
        pool = await create_pool(database_url, schema)
        pools.append(pool)
        await migrate(pool, schema, migrations)
        return pool

    yield open_
    for pool in pools:
        await pool.close()


async def test_cancels_are_forgotten_after_the_replay_window(open_pool: OpenPool) -> None:
    pool = await open_pool("generator", GENERATOR_MIGRATIONS)
    store = PgCancellationStore(pool)
    await store.cancel("recent")
    await store.cancel("old")
    await pool.execute(
        "UPDATE cancelled_jobs SET cancelled_at = now() - $1::interval WHERE job_id = 'old'",
        REPLAY_WINDOW + DAY,
    )
    assert await store.pruner().prune() == 1
    assert (await store.is_cancelled("recent"), await store.is_cancelled("old")) == (True, False)


async def test_variations_are_forgotten_after_the_replay_window(open_pool: OpenPool) -> None:
    pool = await open_pool("postprocess", VARIATION_MIGRATIONS)
    for job, age in (("old", REPLAY_WINDOW + DAY), ("recent", REPLAY_WINDOW - DAY)):
        await pool.execute(
            "INSERT INTO variations (job_id, image_index, version, variation, score,"
            " processed, created_at) VALUES ($1, 0, 1, 0, 0.5, '{}', now() - $2::interval)",
            job,
            age,
        )
    assert await variations_pruner(pool).prune() == 1
    assert [r["job_id"] for r in await pool.fetch("SELECT job_id FROM variations")] == ["recent"]


async def test_expired_idempotency_keys_of_users_who_never_return_are_pruned(
    open_pool: OpenPool,
) -> None:
    pool = await open_pool("gateway", GATEWAY_MIGRATIONS)
    now = datetime.now(UTC)
    await pool.executemany(
        "INSERT INTO idempotency_keys (user_id, key, request_hash, claim, expires_at)"
        " VALUES ($1, $2, 'h', 'c', $3)",
        [
            ("gone-user", "k1", now - timedelta(seconds=1)),
            ("gone-user", "k2", now - DAY),
            ("active-user", "k3", now + DAY),
        ],
    )
    pruner = AgePruner(pool, "idempotency_keys", "expires_at", keep=timedelta(0))
    async with pruning(pruner):  # the gateway's lifespan runs it like this
        async with asyncio.timeout(5):
            while await pool.fetchval("SELECT count(*) FROM idempotency_keys") > 1:
                await asyncio.sleep(0.02)
    assert await pool.fetchval("SELECT key FROM idempotency_keys") == "k3"


async def test_the_pruning_context_stops_its_pruners_at_once(open_pool: OpenPool) -> None:
    pool = await open_pool("postprocess", VARIATION_MIGRATIONS)
    pruner = variations_pruner(pool)  # an hourly interval
    async with asyncio.timeout(2):
        async with pruning(pruner):
            await asyncio.sleep(0.1)


def test_names_and_settings_are_checked_up_front() -> None:
    pool: asyncpg.Pool = None
    with pytest.raises(ValueError, match="not a plain SQL identifier: 'jobs; DROP TABLE x'"):
        AgePruner(pool, "jobs; DROP TABLE x", "created_at", keep=DAY)
    with pytest.raises(ValueError, match="pruning jobs needs a retention of at least 0"):
        AgePruner(pool, "jobs", "created_at", keep=-DAY)
