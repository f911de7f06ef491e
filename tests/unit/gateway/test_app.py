from __future__ import annotations

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


async def test_web_page_is_served(gateway: Gateway) -> None:
    response = await gateway.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "EventSource" in response.text
