"""The worker health endpoint over real HTTP, checking a real PostgreSQL and the in-memory
broker; and the gateway's /readyz with the same rules."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from imagegen.blobstore import InMemoryBlobStore
from imagegen.db import create_pool
from imagegen.errors import RetryableError
from imagegen.health import (
    HealthServer,
    ReadinessCheck,
    ReadyFlag,
    broker_check,
    database_check,
    loops_check,
    object_store_check,
)
from imagegen.kafka import ConsumerLoop
from imagegen.kafka.memory import InMemoryBroker

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, "health_test")
    try:
        yield pool
    finally:
        await pool.close()


async def get(server: HealthServer, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        return await client.get(path)


async def test_ready_when_database_broker_model_and_consumers_are(pool: asyncpg.Pool) -> None:
    broker = InMemoryBroker()
    model = ReadyFlag("loading")
    loop = ConsumerLoop(
        name="generator",
        consumer=broker.consumer("g", ["t"]),
        handlers={},
        dead_letters=broker.publisher(),
        dead_letter_topic="dlq",
    )
    checks: dict[str, ReadinessCheck] = {
        "model": model,
        "database": database_check(pool),
        "broker": broker_check(broker.publisher()),
        "consumers": loops_check([loop]),
    }
    async with HealthServer(0, checks, host="127.0.0.1") as server:
        assert (await get(server, "/healthz")).json() == {"status": "ok"}

        loading = await get(server, "/readyz")
        assert loading.status_code == 503
        assert loading.json()["not_ready"] == ["model"]
        assert loading.json()["checks"]["model"] == "loading"

        model.set()
        ready = await get(server, "/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ready",
            "checks": {"model": "ok", "database": "ok", "broker": "ok", "consumers": "ok"},
            "not_ready": [],
        }

        broker.reachable = False
        loop.stop()
        down = await get(server, "/readyz")
        assert down.status_code == 503
        assert down.json()["not_ready"] == ["broker", "consumers"]
        assert "unreachable" in down.json()["checks"]["broker"]
        assert down.json()["checks"]["consumers"] == "stopping: generator"

        assert (await get(server, "/nope")).status_code == 404
        metrics = await get(server, "/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")


async def test_an_unreachable_database_is_named_in_a_503(database_url: str) -> None:
    # A pool that opens no connection up front, pointed at a port nobody listens on.
    dead = urlsplit(database_url)._replace(netloc=f"postgres@127.0.0.1:{free_port()}").geturl()
    pool = await asyncpg.create_pool(dead, min_size=0, max_size=1)
    try:
        checks: dict[str, ReadinessCheck] = {
            "database": database_check(pool),
            "broker": broker_check(InMemoryBroker().publisher()),
        }
        async with HealthServer(0, checks, host="127.0.0.1", check_timeout_s=2.0) as server:
            response = await get(server, "/readyz")
            assert (await get(server, "/healthz")).status_code == 200  # alive all the same
    finally:
        await pool.close()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["not_ready"] == ["database"]
    assert body["checks"]["database"].startswith("unavailable: ")
    assert body["checks"]["broker"] == "ok"


async def test_an_object_store_outage_is_named_in_a_503() -> None:
    class Down(InMemoryBlobStore):
        async def exists(self, key: str) -> bool:
            raise RetryableError("s3 unavailable: connection refused")

    checks: dict[str, ReadinessCheck] = {
        "object_store": object_store_check(Down()),
        "broker": broker_check(InMemoryBroker().publisher()),
    }
    async with HealthServer(0, checks, host="127.0.0.1", check_timeout_s=2.0) as server:
        response = await get(server, "/readyz")
        healthy = {"object_store": object_store_check(InMemoryBlobStore())}
        async with HealthServer(0, healthy, host="127.0.0.1", check_timeout_s=2.0) as fine:
            assert (await get(fine, "/readyz")).status_code == 200
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["object_store"]
    assert "connection refused" in response.json()["checks"]["object_store"]


async def test_a_hung_check_reads_as_a_timeout_not_a_hung_probe() -> None:
    import asyncio

    async def never() -> None:
        await asyncio.Event().wait()

    async with HealthServer(0, {"database": never}, host="127.0.0.1", check_timeout_s=0.1) as s:
        response = await get(s, "/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "timeout after 0.1s"


async def test_gateway_readyz_names_an_unreachable_broker(database_url: str) -> None:
    from tests.unit.gateway.conftest import running_gateway

    async with running_gateway(database_url) as gateway:
        assert (await gateway.client.get("/readyz")).status_code == 200
        gateway.broker.reachable = False
        response = await gateway.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["broker"]
    assert response.json()["checks"]["database"] == "ok"
