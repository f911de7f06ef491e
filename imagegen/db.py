"""PostgreSQL plumbing: one schema per service, versioned migrations, retryable error mapping,
and transactions whose BEGIN and COMMIT ride in statements (`begun`)."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg

from imagegen.errors import ConfigurationError, RetryableError

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Errors that say "the database is not reachable right now", not "your query is wrong".
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


@asynccontextmanager
async def transient_as_retryable() -> AsyncIterator[None]:
    """Map lost connections and similar to RetryableError so the consumer loop retries."""
    try:
        yield
    except _TRANSIENT as exc:
        raise RetryableError(f"database unavailable: {type(exc).__name__}: {exc}") from exc


def sql_literal(value: str | int | None) -> str:
    """`value` as an SQL literal, for a statement sent as a simple query beside others (a
    write and its COMMIT in one round trip). Text is dollar-quoted with a tag that does not
    occur in it, so no character of it is special whatever the server's string settings."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        raise TypeError("sql_literal: pass booleans as TRUE/FALSE yourself")
    if isinstance(value, int):
        return str(value)
    if "\x00" in value:
        raise ValueError("sql_literal: text with a NUL character cannot be stored")
    n = 0
    while f"$q{n}" in value:  # without its closing `$`: nor may the text end in its prefix
        n += 1
    return f"$q{n}${value}$q{n}$"


@asynccontextmanager
async def begun(conn: asyncpg.Connection, first: str = "") -> AsyncIterator[str]:
    """A transaction opened with `first` (literals only) in the same round trip as BEGIN;
    yields the status of `first` (such as `INSERT 0 1`), or of BEGIN.

    asyncpg's `Connection.transaction()` sends BEGIN and COMMIT as queries of their own; a
    statement sent as a simple query (no parameters: literals from `sql_literal`) may carry
    them instead. The body may end the transaction itself (`...; COMMIT`); one still open
    at the end is committed, and one the body (or `first`) failed is rolled back before
    the error goes on."""
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


def check_identifier(name: str) -> str:
    if not _IDENT.match(name):
        raise ConfigurationError(f"not a safe SQL identifier: {name!r}")
    return name


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """A released connection keeps its session as it is: no reset query."""


async def create_pool(
    dsn: str,
    schema: str,
    *,
    min_size: int = 1,
    max_size: int = 5,
    session_state: bool = False,
) -> asyncpg.Pool:
    """A pool whose connections see only this service's schema.

    By default a released connection goes back without asyncpg's reset query (unlock all
    advisory locks, CLOSE ALL, UNLISTEN *, RESET ALL: a round trip on every release), since
    the services keep no session state on pooled connections: their settings are fixed at
    connect, their locks are transaction-scoped (`pg_advisory_xact_lock`), and their LISTEN
    has a connection of its own. asyncpg still rolls back a transaction left open and drops
    listeners. A pool whose users take session locks, LISTEN or SET passes
    `session_state=True` and keeps the reset.
    """
    check_identifier(schema)
    async with transient_as_retryable():
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings={"search_path": schema, "application_name": f"imagegen-{schema}"},
            command_timeout=30,
            reset=None if session_state else _keep_session,
        )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, schema: str, migrations: Sequence[tuple[int, str]]) -> int:
    """Apply numbered migrations in order, once each; returns the schema's version.

    An advisory lock keyed on the schema lets several replicas start at once.
    """
    check_identifier(schema)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {
            row["version"]
            for row in await conn.fetch(f"SELECT version FROM {schema}.schema_migrations")
        }
        for version, sql in sorted(migrations):
            if version in applied:
                continue
            await conn.execute(f"SET LOCAL search_path TO {schema}")
            await conn.execute(sql)
            await conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version) VALUES ($1)", version
            )
            log.info("event=migration_applied schema=%s version=%d", schema, version)
        latest = max((v for v, _ in migrations), default=0)
    return latest
