"""Transactions that spend no round trip of their own on BEGIN or COMMIT.

asyncpg's `Connection.transaction()` sends BEGIN and COMMIT as queries of their own. A
statement sent as a simple query (no parameters: literals from `imagegen.db.sql_literal`)
may carry them instead: `BEGIN; <first statement>` opens the transaction and does its first
work in one round trip, and `<last statement>; COMMIT` ends it in one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg


@contextlib.asynccontextmanager
async def begun(conn: asyncpg.Connection, first: str = "") -> AsyncIterator[None]:
    """A transaction opened with `first` (literals only) in the same round trip as BEGIN.

    The body may end it itself (`...; COMMIT`); one still open at the end is committed, and
    one the body (or `first`) failed is rolled back before the error goes on."""
    try:
        await conn.execute(f"BEGIN; {first}" if first else "BEGIN")
        yield
        if conn.is_in_transaction():
            await conn.execute("COMMIT")
    except BaseException:
        if conn.is_in_transaction() and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
