"""The gateway's LISTEN connection cut from the server side, as a failover or a restarted
PostgreSQL would cut it (tests of the SSE wake-up path)."""

from __future__ import annotations

import asyncpg

from services.gateway.notify import LISTENER_NAME


async def drop_listeners(dsn: str, admin: asyncpg.Connection | None = None) -> None:
    """Terminate every `imagegen-gateway-listen` session of `dsn`'s database; on `admin`
    when given (the caller keeps using it), else on a connection of its own."""
    statement = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE application_name = '{LISTENER_NAME}'"
        " AND datname = current_database()"
    )
    if admin is not None:
        await admin.execute(statement)
        return
    own = await asyncpg.connect(dsn)
    try:
        await own.execute(statement)
    finally:
        await own.close()
