"""Transactions that carry BEGIN and COMMIT inside statements, on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from imagegen.db import create_pool, migrate
from services.scheduler.handlers import _watch_statement
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.overdue import AWAITING_COMPLETED, AWAITING_STORED
from services.scheduler.transactions import begun

# A job id that would end an ordinary or a dollar-quoted literal if it were spliced in raw.
ODD_JOB = "o'neil $q0$ \\ end"


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, "scheduler")
    await migrate(pool, "scheduler", MIGRATIONS)
    try:
        yield pool
    finally:
        await pool.close()


async def users(conn: asyncpg.Connection) -> list[str]:
    return [r["user_id"] for r in await conn.fetch("SELECT user_id FROM users ORDER BY user_id")]


async def test_the_first_statement_and_the_body_commit_together(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        async with begun(conn, "INSERT INTO users VALUES ('a')"):
            assert conn.is_in_transaction()
            await conn.execute("INSERT INTO users VALUES ($1)", "b")
        assert not conn.is_in_transaction()
    async with pool.acquire() as other:
        assert await users(other) == ["a", "b"]


async def test_a_body_that_commits_in_its_last_statement_is_left_committed(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        async with begun(conn):
            await conn.execute("INSERT INTO users VALUES ('a'); COMMIT")
            assert not conn.is_in_transaction()
        assert await users(conn) == ["a"]


async def test_a_failing_body_rolls_back_what_the_first_statement_did(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError, match="boom"):
            async with begun(conn, "INSERT INTO users VALUES ('a')"):
                await conn.execute("INSERT INTO users VALUES ('b')")
                raise RuntimeError("boom")
        assert not conn.is_in_transaction()
        assert await users(conn) == []


async def test_a_failing_first_statement_leaves_no_transaction_open(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.UniqueViolationError):
            async with begun(conn, "INSERT INTO users VALUES ('a'), ('a')"):
                pytest.fail("the body runs only after its first statement succeeded")
        assert not conn.is_in_transaction()
        assert await users(conn) == []


async def _image(conn: asyncpg.Connection, awaiting: str | None, attempt: int = 1) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_id, user_id, tier, kind, image_count, status, request)"
        " VALUES ($1, 'u', 'paid', 'pack', 1, 'running', '{}')",
        ODD_JOB,
    )
    await conn.execute(
        "INSERT INTO job_images (job_id, image_index, image_id, status, attempt, message,"
        " awaiting) VALUES ($1, 0, 'img', 'dispatched', $2, '{}', $3)",
        ODD_JOB,
        attempt,
        awaiting,
    )


async def _deadline(conn: asyncpg.Connection) -> tuple[str | None, float | None]:
    row = await conn.fetchrow(
        "SELECT awaiting, extract(epoch FROM due_at - now())::float8 AS left_s FROM job_images"
        " WHERE job_id = $1",
        ODD_JOB,
    )
    assert row is not None
    return row["awaiting"], row["left_s"]


async def test_the_watch_statement_quotes_what_it_is_given(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await _image(conn, None, attempt=2)
        await conn.execute(_watch_statement(ODD_JOB, 0, 1, AWAITING_COMPLETED, 90.5))
        assert await _deadline(conn) == (None, None), "another attempt's start moves nothing"
        await conn.execute(_watch_statement(ODD_JOB, 0, 2, AWAITING_COMPLETED, 90.5))
        awaiting, left = await _deadline(conn)
        assert awaiting == AWAITING_COMPLETED
        assert left is not None and 80 < left <= 90.5


async def test_the_watch_never_goes_back_from_awaiting_storage(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await _image(conn, AWAITING_STORED)
        await conn.execute(_watch_statement(ODD_JOB, 0, 1, AWAITING_COMPLETED, 60))
        assert await _deadline(conn) == (AWAITING_STORED, None)
        await conn.execute(_watch_statement(ODD_JOB, 0, None, AWAITING_STORED, 60))
        awaiting, left = await _deadline(conn)
        assert awaiting == AWAITING_STORED and left is not None and left > 50
    assert _watch_statement(ODD_JOB, 0, None, AWAITING_STORED, 0) == "", "no deadline kept"
