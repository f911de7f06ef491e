"""The benchmark scripts load and explain their options (they are run by hand, not in CI),
and their counting proxies count real traffic right."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize(
    "script",
    [
        "orchestration.py",
        "sse_fanout.py",
        "first_event.py",
        "lean_costs.py",
        "broker_cpu.py",
        "idle_threads.py",
        "idle_wakes.py",
        "trickle_threads.py",
    ],
)
def test_bench_script_help(script: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--" in out.stdout


# The counting proxies of bench/orchestration.py, against real servers and real clients.


@pytest.fixture
def meters() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import meters as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def _socket(dsn: str) -> str:
    """The Unix socket of the test server's DSN (`?host=<dir>&port=<n>`)."""
    query = dict(parse_qsl(urlsplit(dsn).query))
    return f"{query['host']}/.s.PGSQL.{query['port']}"


async def test_postgres_proxy_counts_round_trips_per_database(
    meters: Any, database_url: str, pg_dsn_base: str
) -> None:
    database = urlsplit(database_url).path.strip("/")
    with meters.PostgresProxy(_socket(pg_dsn_base)) as proxy:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=proxy.port, user="postgres", database=database, ssl=False
        )
        try:
            await conn.execute("CREATE TABLE t (n int)")
            start = proxy.counts()

            def since() -> tuple[int, int]:
                now = meters.subtract(proxy.counts(), start)
                return now["round_trips"].get(database, 0), now["simple_queries"].get(database, 0)

            await conn.execute("SELECT 1")  # no arguments: one simple Query
            assert since() == (1, 1)
            async with conn.transaction():  # BEGIN and COMMIT are simple Queries too
                await conn.execute("INSERT INTO t VALUES (1)")
            assert since() == (4, 4)
            await conn.fetchval("SELECT count(*) FROM t WHERE n > $1", 0)  # prepare, execute
            assert since() == (6, 4)
            await conn.fetchval("SELECT count(*) FROM t WHERE n > $1", 0)  # cached: execute
            assert since() == (7, 4)
            await conn.executemany("INSERT INTO t VALUES ($1)", [(2,), (3,), (4,)])
            assert since() == (9, 4)  # its prepare, then one Sync for all three rows
            assert await conn.fetchval("SELECT count(*) FROM t") == 4
        finally:
            await conn.close()
    counts = proxy.counts()
    assert counts["connections"] == {database: 1}
    assert proxy.connections == 1


async def test_s3_proxy_counts_requests_by_kind(meters: Any, seaweed: Any) -> None:
    from pydantic import SecretStr

    from imagegen.blobstore import S3BlobStore
    from imagegen.settings import S3Settings

    port = int(urlsplit(seaweed.endpoint).port or 0)
    with meters.S3Proxy(port) as proxy:
        settings = S3Settings(
            endpoint=f"http://127.0.0.1:{proxy.port}",
            bucket=seaweed.bucket,
            region=seaweed.region,
            access_key=SecretStr(seaweed.access_key),
            secret_key=SecretStr(seaweed.secret_key),
        )
        prefix = f"proxy-{uuid.uuid4().hex}"
        big = bytes(range(256)) * (3 * 4096)  # 3 MiB: the body spans many reads
        async with S3BlobStore(settings) as store:
            await store.put(f"{prefix}/small", b"small", "text/plain")
            await store.put(f"{prefix}/big", big, "application/octet-stream")
            assert await store.get(f"{prefix}/big") == big
            assert await store.exists(f"{prefix}/small")
            await store.copy(f"{prefix}/small", f"{prefix}/copied")
            await store.delete([f"{prefix}/small", f"{prefix}/copied", f"{prefix}/big"])
    assert proxy.counts() == {"PUT": 2, "GET": 1, "HEAD": 1, "COPY": 1, "POST": 1}


def test_costs_per_image_subtract_the_idle_rate(meters: Any) -> None:
    idle = {"seconds": 10.0, "pg_transactions": 20, "kafka_messages": 0}
    load = {"seconds": 30.0, "pg_transactions": 160, "kafka_messages": 100, "kafka": {}}
    costs = meters.per_image(load, idle, images=10)
    # 160 in 30 s, of which 2/s x 30 s = 60 at rest: 100 for 10 images.
    assert costs["per_image"] == {"pg_transactions": 10.0, "kafka_messages": 10.0}
    assert costs["per_image_raw"] == {"pg_transactions": 16.0, "kafka_messages": 10.0}
    assert costs["idle_per_s"] == {"pg_transactions": 2.0, "kafka_messages": 0.0}
    assert meters.subtract({"a": {"x": 5}, "b": 3}, {"a": {"x": 2}}) == {"a": {"x": 3}, "b": 3}


async def test_postgres_proxy_attributes_by_application(
    meters: Any, database_url: str, pg_dsn_base: str
) -> None:
    """Round trips, transactions and statements per `application_name`: an explicit block,
    an implicit one per Sync outside it, and simple queries holding BEGIN or COMMIT."""
    database = urlsplit(database_url).path.strip("/")
    with meters.PostgresProxy(_socket(pg_dsn_base)) as proxy:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=proxy.port,
            user="postgres",
            database=database,
            ssl=False,
            server_settings={"application_name": "imagegen-test"},
        )
        try:
            await conn.execute("CREATE TABLE t (n int)")
            start = proxy.attribution()
            async with conn.transaction():  # one transaction: BEGIN, INSERT, COMMIT
                await conn.execute("INSERT INTO t VALUES ($1)", 1)
            await conn.fetchval("SELECT count(*) FROM t WHERE n > $1", 0)  # implicit: one
            await conn.execute("BEGIN; INSERT INTO t VALUES (2)")  # one, two statements
            await conn.execute("INSERT INTO t VALUES ($1)", 3)  # inside it
            await conn.execute("INSERT INTO t VALUES (4); COMMIT")
            await conn.execute("INSERT INTO t VALUES ($1)", 5)  # implicit again
        finally:
            await conn.close()
    since = meters.subtract(proxy.attribution(), start)
    assert since["transactions"]["imagegen-test"] == 4
    # BEGIN, INSERT (prepare, execute), COMMIT; count (prepare, execute); the simple
    # BEGIN query; an execute (its statement prepared); the simple COMMIT query; an execute.
    assert since["round_trips"]["imagegen-test"] == 10
    statements = since["statements"]["imagegen-test"]
    assert statements["INSERT INTO t VALUES ($1)"] == 3
    assert statements["SELECT count(*) FROM t WHERE n > $1"] == 1
