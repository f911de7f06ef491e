"""Transactions that spend no round trip of their own on BEGIN or COMMIT.

asyncpg's `Connection.transaction()` sends BEGIN and COMMIT as queries of their own. A
statement sent as a simple query (no parameters: literals from `imagegen.db.sql_literal`)
may carry them instead: `BEGIN; <first statement>` opens the transaction and does its first
work in one round trip, and `<last statement>; COMMIT` ends it in one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar

import asyncpg

# The users whose row (`users`, the lock of their slot decisions) the current handler
# transaction holds already; None outside one (then every activation locks it itself).
_LOCKED_USERS: ContextVar[set[str] | None] = ContextVar("scheduler_locked_users", default=None)


@contextlib.asynccontextmanager
async def begun(conn: asyncpg.Connection, first: str = "") -> AsyncIterator[str]:
    """A transaction opened with `first` (literals only) in the same round trip as BEGIN;
    yields the status of `first` (such as `INSERT 0 1`), or of BEGIN.

    The body may end it itself (`...; COMMIT`); one still open at the end is committed, and
    one the body (or `first`) failed is rolled back before the error goes on."""
    try:
        status: str = await conn.execute(f"BEGIN; {first}" if first else "BEGIN")
        yield status
        if conn.is_in_transaction():
            await conn.execute("COMMIT")
    except BaseException:
        if conn.is_in_transaction() and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def tracking_user_locks() -> Iterator[None]:
    """Within: `user_locked` remembers the users whose row this transaction locked."""
    token = _LOCKED_USERS.set(set())
    try:
        yield
    finally:
        _LOCKED_USERS.reset(token)


def note_user_locked(user_id: str) -> None:
    """The current transaction holds `user_id`'s row now (nothing outside `tracking_user_locks`)."""
    locked = _LOCKED_USERS.get()
    if locked is not None:
        locked.add(user_id)


def user_locked(user_id: str) -> bool:
    """Whether the current transaction holds `user_id`'s row (a lock held to its end)."""
    locked = _LOCKED_USERS.get()
    return locked is not None and user_id in locked
