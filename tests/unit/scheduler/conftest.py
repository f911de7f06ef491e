"""Fixtures shared by the scheduler's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from imagegen.db import create_pool, migrate
from services.scheduler.migrations import MIGRATIONS


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a migrated scheduler schema, as the service opens it."""
    pool = await create_pool(database_url, "scheduler")
    await migrate(pool, "scheduler", MIGRATIONS)
    try:
        yield pool
    finally:
        await pool.close()
