"""The generator's in-memory view of `cancelled_jobs` (LISTEN/NOTIFY), on a real PostgreSQL:
another pod's cancel is seen without a read per image; until the view is live, and while
its connection is lost, the table is read as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from imagegen.db import create_pool, migrate
from services.generator.cancel_feed import ListenedCancellationStore
from services.generator.cancellation import CancelListener, CancelWatch
from services.generator.migrations import MIGRATIONS, SCHEMA
from tests.unit.generator.support import ScriptedBackend, make_job, of_type, record_of
from tests.unit.generator.test_cancellation import (
    cancelled_record,
    generator_with,
    only_cancelled_failure,
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool: asyncpg.Pool = await create_pool(database_url, SCHEMA)
    try:
        await migrate(pool, SCHEMA, MIGRATIONS)
        yield pool
    finally:
        await pool.close()


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait for `check` to hold (a notification's delivery); fail after a generous bound."""
    async with asyncio.timeout(30):
        while not await check():
            await asyncio.sleep(0.01)


async def test_a_cancel_recorded_by_one_pod_reaches_another_without_a_read(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with (
        ListenedCancellationStore(pool, database_url) as a,
        ListenedCancellationStore(pool, database_url) as b,
    ):
        assert a.live and b.live
        await a.cancel("j-1")
        await _until(lambda: b.is_cancelled("j-1"))
        await a.cancel("j-1")  # a redelivery is harmless
        assert not await b.is_cancelled("j-2")
        assert (a.table_reads, b.table_reads) == (0, 0)


async def test_a_pod_started_after_the_cancel_loads_it(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with ListenedCancellationStore(pool, database_url) as a:
        await a.cancel("j-early")
    async with ListenedCancellationStore(pool, database_url) as fresh:
        assert fresh.live
        assert await fresh.is_cancelled("j-early")
        assert fresh.table_reads == 0


async def test_until_live_the_table_is_read(pool: asyncpg.Pool, database_url: str) -> None:
    store = ListenedCancellationStore(pool, database_url)  # never started
    await store.cancel("j-1")
    assert await store.is_cancelled("j-1")
    assert not await store.is_cancelled("j-2")
    assert store.table_reads == 2


async def test_a_lost_connection_falls_back_to_the_table_then_reloads(
    pool: asyncpg.Pool, database_url: str, unused_tcp_port: int
) -> None:
    async with ListenedCancellationStore(pool, database_url, reconnect_s=0.05) as store:
        assert store.live
        # Reconnecting fails (nothing listens on that port) until the address is back.
        store.listener._dsn = f"postgresql://nobody@127.0.0.1:{unused_tcp_port}/none"
        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'imagegen-generator-listen'"
            " AND datname = current_database()"
        )

        async def down() -> bool:
            return not store.live

        await _until(down)
        # Written while nothing listens (no notification reaches this pod): read from the
        # table meanwhile, and in the reloaded view once live again.
        await pool.execute("INSERT INTO cancelled_jobs (job_id) VALUES ('j-unheard')")
        assert await store.is_cancelled("j-unheard")
        assert store.table_reads == 1
        store.listener._dsn = database_url
        assert await store.listener.wait_live(30)
        assert await store.is_cancelled("j-unheard")
        assert store.table_reads == 1


async def test_a_cancelled_queued_job_never_starts_and_costs_no_read(
    pool: asyncpg.Pool, database_url: str
) -> None:
    async with (
        ListenedCancellationStore(pool, database_url) as here,
        ListenedCancellationStore(pool, database_url) as elsewhere,
    ):
        backend = ScriptedBackend("demo")
        generator, broker, topics = generator_with(backend, CancelWatch(here))
        job = make_job()
        # Another pod's control consumer saw the cancel.
        await CancelListener(CancelWatch(elsewhere)).on_event(cancelled_record(job.image.job_id))
        await _until(lambda: here.is_cancelled(job.image.job_id))
        await generator.on_job(record_of(job, topics))
        assert backend.calls == []
        assert of_type(broker, topics, "generation_started") == []
        only_cancelled_failure(broker, topics)
        await generator.on_job(record_of(make_job(), topics))
        assert len(backend.calls) == 1
        assert here.table_reads == 0
