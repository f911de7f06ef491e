"""The analytics HTTP API over a MemoryStore: JSON views, 4xx naming the unknown, /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.analytics.http import build_web_app
from services.analytics.memory import MemoryStore
from services.analytics.pipeline import apply
from tests.unit.analytics.events_factory import BASE, encoded, job_events


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    store = MemoryStore()
    for raw in encoded(job_events("j1", "alice", "realtime", images=2, fail={1})):
        apply(store, raw, BASE.timestamp())
    apply(store, b"garbage", BASE.timestamp())
    app = build_web_app(store, lambda: (True, ""), budget_usd=500.0)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_windows_and_series(client: TestClient) -> None:  # type: ignore[type-arg]
    listing = await (await client.get("/api/v1/windows")).json()
    assert [w["name"] for w in listing["windows"]] == ["minute", "hour"]
    minute = await (await client.get("/api/v1/windows/minute")).json()
    assert sum(w["kpis"]["completed"] for w in minute["windows"]) == 1
    series = await (await client.get("/api/v1/windows/hour/metrics/success_rate")).json()
    assert [row["value"] for row in series["series"]] == [0.5] * 4
    counts = await (await client.get("/api/v1/windows/minute/counts")).json()
    assert any("rejected{reason=malformed}" in w["counts"] for w in counts["windows"])


@pytest.mark.parametrize(
    ("path", "status", "named"),
    [
        ("/api/v1/windows/fortnight", 404, "'fortnight'"),
        ("/api/v1/windows/fortnight/metrics/completed", 404, "'fortnight'"),
        ("/api/v1/windows/minute/metrics/happiness", 404, "'happiness'"),
        ("/api/v1/windows/minute/counts?x=1", 200, ""),
        ("/api/v1/windows/minute?last=zero", 400, "'zero'"),
    ],
)
async def test_unknown_names_are_4xx_naming_them(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    status: int,
    named: str,
) -> None:
    response = await client.get(path)
    assert response.status == status
    if named:
        assert named in (await response.json(content_type=None))["detail"]


async def test_metrics_and_promises(client: TestClient) -> None:  # type: ignore[type-arg]
    text = await (await client.get("/metrics")).text()
    for name in (
        'imagegen_analytics_images_total{error_type="",model="demo-model",outcome="completed"',
        "imagegen_analytics_time_to_first_image_seconds_bucket",
        "imagegen_analytics_image_duration_seconds_bucket",
        "imagegen_analytics_queue_wait_seconds_bucket",
        "imagegen_analytics_spend_usd_today",
        "imagegen_analytics_budget_usd_daily 500.0",
        'imagegen_analytics_cost_usd_total{model="demo-model",provider="demo"} 0.02',
        "imagegen_analytics_consistency_score_bucket",
        "imagegen_analytics_consistency_flagged_total 0.0",
        "imagegen_analytics_concurrent_jobs",
        'imagegen_analytics_events_total{kind="image_stored"} 1.0',
        'imagegen_analytics_events_rejected_total{reason="malformed"} 1.0',
        "imagegen_analytics_duplicates_total 0.0",
    ):
        assert name in text, name
    body = await (await client.get("/api/v1/promises")).json()
    names = [p["name"] for p in body["promises"]]
    assert names == [
        "success_rate",
        "time_to_first_image",
        "consistency",
        "cost_per_image",
        "budget",
        "throughput",
        "concurrent_jobs",
    ]
    assert {p["status"] for p in body["promises"]} <= {"pass", "fail", "no data"}
    assert (await client.get("/")).status == 200
    assert (await client.get("/openapi.json")).status == 200
