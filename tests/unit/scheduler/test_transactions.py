"""Transactions that carry BEGIN and COMMIT inside statements, on a real PostgreSQL."""

from __future__ import annotations

import json

import asyncpg
import pytest
from pydantic import BaseModel

from imagegen.db import begun
from imagegen.telemetry import ENQUEUED_AT_HEADER
from services.scheduler.outbox import STAGE_ROWS, columns, pending, stage, staged_row, transaction
from services.scheduler.outcomes import _watch_statement
from services.scheduler.overdue import AWAITING_COMPLETED, AWAITING_STORED

# A job id that would end an ordinary or a dollar-quoted literal if it were spliced in raw.
ODD_JOB = "o'neil $q0$ \\ end"


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


class Note(BaseModel):
    text: str


# Text that would end a literal spliced in raw: quotes, a dollar tag, a backslash, non-ASCII.
ODD_TEXT = "it's $q0$ \\x00 \\ é ✓"


async def outbox(conn: asyncpg.Connection) -> list[tuple[str, str | None, bytes, str]]:
    rows = await conn.fetch("SELECT topic, key, value, headers::text FROM outbox ORDER BY id")
    return [(r["topic"], r["key"], bytes(r["value"]), r["headers"]) for r in rows]


async def test_staged_rows_are_written_in_staging_order_with_the_commit(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        async with transaction(conn, "INSERT INTO users VALUES ('a')"):
            await stage(conn, "t", "k1", Note(text=ODD_TEXT), traceparent="")
            # A statement that writes rows of its own writes the pending ones first.
            rows = [*pending(), await staged_row(conn, "t", None, Note(text="2"), traceparent="")]
            await conn.execute(STAGE_ROWS, *columns(rows))
            await stage(conn, "t", "k3", Note(text="3"), traceparent="")
            await stage(conn, "u", "k4", Note(text="4"), traceparent="")
            async with pool.acquire() as other:
                assert [r[1] for r in await outbox(other)] == [], "nothing visible before COMMIT"
        assert not conn.is_in_transaction()
        written = await outbox(conn)
    assert [(topic, key) for topic, key, _, _ in written] == [
        ("t", "k1"),
        ("t", None),
        ("t", "k3"),
        ("u", "k4"),
    ]
    assert [Note.model_validate_json(value).text for _, _, value, _ in written] == [
        ODD_TEXT,
        "2",
        "3",
        "4",
    ]
    assert written[0][2] == Note(text=ODD_TEXT).model_dump_json().encode(), "bytes as staged"
    assert all(ENQUEUED_AT_HEADER in json.loads(headers) for *_, headers in written)


async def test_a_rolled_back_transaction_writes_none_of_its_staged_rows(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with transaction(conn):
                await stage(conn, "t", "k", Note(text="lost"), traceparent="")
                raise RuntimeError("handler failed")
        assert await outbox(conn) == []
        # Outside a transaction a row is written at once, as before.
        await stage(conn, "t", "k", Note(text="now"), traceparent="")
        assert len(await outbox(conn)) == 1
        assert pending() == []
