"""Storage's schema on real PostgreSQL: the job-state mirror (fed by the events topic until
storage stopped consuming it) is dropped by migration 6, its images untouched."""

from __future__ import annotations

import asyncpg

from imagegen.db import create_pool, migrate
from services.storage.migrations import MIGRATIONS

MIRROR = {"generation_jobs", "generation_job_images", "applied_events"}


async def _tables(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'storage'")
    return {r["tablename"] for r in rows}


async def test_the_job_mirror_is_dropped_and_the_images_stay(database_url: str) -> None:
    pool = await create_pool(database_url, "storage")
    try:
        await migrate(pool, "storage", [m for m in MIGRATIONS if m[0] < 6])
        assert await _tables(pool) >= MIRROR
        await pool.execute(
            "INSERT INTO generation_jobs (job_id, user_id, status) VALUES ('j1', 'u1', 'queued')"
        )
        await pool.execute("INSERT INTO applied_events (event_id) VALUES ('e1')")

        await migrate(pool, "storage", MIGRATIONS)
        tables = await _tables(pool)
        assert not MIRROR & tables
        assert {"images", "deleted_images", "deleted_owners"} <= tables
        await migrate(pool, "storage", MIGRATIONS)  # applied once: a restart changes nothing
    finally:
        await pool.close()
