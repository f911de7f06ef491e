from __future__ import annotations

import asyncio

from tests.unit.gateway.conftest import Gateway


async def test_health_and_readiness(gateway: Gateway) -> None:
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "consumer": "ok"}


async def test_readiness_fails_when_the_consumer_stopped(gateway: Gateway) -> None:
    gateway.state.consumer_loop.stop()
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["consumer"] == "stopped"


async def test_liveness_fails_when_the_consumer_died_unasked(gateway: Gateway) -> None:
    async def crash() -> None:
        raise RuntimeError("commit failed for good")

    dead = asyncio.create_task(crash())
    await asyncio.gather(dead, return_exceptions=True)
    running = gateway.state.consumer_task
    gateway.state.consumer_task = dead
    try:
        live = await gateway.client.get("/healthz")
    finally:
        gateway.state.consumer_task = running
    assert live.status_code == 503
    assert "commit failed for good" in live.json()["reason"]
    assert (await gateway.client.get("/healthz")).status_code == 200


async def test_web_page_is_served(gateway: Gateway) -> None:
    response = await gateway.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "EventSource" in response.text
