"""One trace per request across the five services: an HTTP request to the gateway, the
scheduler, the generator (a retry from the scheduler's ticker included), postprocess,
storage, and the events back to the gateway's projection, all under the request's trace id."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from imagegen.health import HealthServer
from imagegen.settings import KafkaSettings
from imagegen.telemetry import SERVICE_ATTRIBUTE, configure_metrics
from schemas.events import JobStatus, PackCompleted
from schemas.requests import UserTier
from schemas.topics import Tier
from services.gateway.app import create_app
from services.gateway.auth import issue_token
from services.gateway.settings import GatewaySettings
from services.generator.backends import CancelToken, GeneratedImage, GenerationRequest
from tests.unit.pipeline.harness import FakeBackend, Pipeline, running_pipeline

SERVICES = {"gateway", "scheduler", "generator", "postprocess", "storage"}


class FailsFirstCall(FakeBackend):
    """The first image fails once, so the scheduler's ticker sends a retry."""

    def generate(
        self, request: GenerationRequest, on_progress: object, cancel: CancelToken
    ) -> GeneratedImage:
        if not self.calls:
            self.calls.append(request.seed)
            raise RuntimeError("first call fails")
        return super().generate(request, on_progress, cancel)


@asynccontextmanager
async def gateway_on(p: Pipeline, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        env="test",
        database_url=database_url,
        kafka=KafkaSettings(namespace=p.topics.namespace),
        consumer_poll_s=0.05,
        shutdown_timeout_s=2.0,
    )
    app = create_app(
        settings,
        publisher=p.broker.publisher(),
        consumer_factory=p.broker.consumer,
        blob_store=p.blobs,
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client,
    ):
        client.headers["Authorization"] = "Bearer " + issue_token(
            settings.jwt_secret, f"user-{uuid.uuid4().hex[:8]}", UserTier.PAID, 600
        )
        yield client


def service(span: ReadableSpan) -> str:
    return str((span.attributes or {}).get(SERVICE_ATTRIBUTE, ""))


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    value: int = span.context.trace_id
    return value


async def run_pack(p: Pipeline, client: httpx.AsyncClient, count: int = 2) -> str:
    """A pack through the gateway's HTTP API to its pack_completed; its job id."""
    character = await client.post("/api/v1/characters", json={"name": "Mia"})
    assert character.status_code == 201, character.text
    accepted = await client.post(
        "/api/generate", json={"character_id": character.json()["id"], "image_count": count}
    )
    assert accepted.status_code == 202, accepted.text
    job_id: str = accepted.json()["job_id"]
    done = await p.wait_for("pack_completed", job_id)
    assert isinstance(done, PackCompleted)
    assert done.data.status is JobStatus.COMPLETED
    return job_id


async def test_a_packs_spans_from_all_five_services_share_the_requests_trace(
    database_url: str, spans: InMemorySpanExporter
) -> None:
    async with (
        running_pipeline(database_url, FailsFirstCall()) as p,
        gateway_on(p, database_url) as client,
    ):
        await run_pack(p, client)

    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    [http] = [s for s in servers if s.name == "POST /api/generate"]
    assert service(http) == "gateway"
    assert http.attributes is not None and http.attributes["http.route"] == "/api/generate"
    trace = trace_id(http)

    in_trace = [s for s in finished if trace_id(s) == trace]
    assert {service(s) for s in in_trace} >= SERVICES

    # Every message of the pipeline was consumed under the request's trace: nothing of
    # this (only) job started a trace of its own, the ticker's retry included.
    topics = p.topics
    consumed = [s for s in finished if s.kind is SpanKind.CONSUMER]
    for topic, who, least in (
        (topics.requests, "scheduler", 1),
        (topics.jobs(Tier.REALTIME), "generator", 3),  # 2 images + 1 retry
        (topics.images_raw, "postprocess", 2),
        (topics.images_processed, "storage", 2),
        (topics.events, "scheduler", 2),
        (topics.events, "gateway", 2),
    ):
        mine = [s for s in consumed if s.name == f"{topic} process" and service(s) == who]
        assert len(mine) >= least, (topic, who, len(mine))
        assert {trace_id(s) for s in mine} == {trace}, (topic, who)

    names = {(service(s), s.name) for s in in_trace}
    assert ("postprocess", "renditions") in names
    assert ("postprocess", "consistency") in names
    # Storage's admission and row (one statement: postprocess wrote the finals, nothing
    # to copy, so no `upload` span).
    assert ("storage", "record") in names
    # Time on the jobs topic, from GenerateImage.enqueued_at to the generator's poll.
    waits = [s for s in in_trace if s.name.endswith(" wait") and service(s) == "generator"]
    assert len(waits) >= 3
    assert all(s.end_time is not None and s.start_time is not None for s in waits)
    assert all(s.end_time >= s.start_time for s in waits)  # type: ignore[operator]


async def test_metrics_are_scraped_from_the_gateway_and_a_worker_health_server(
    database_url: str,
) -> None:
    configure_metrics("tests")
    async with (
        running_pipeline(database_url) as p,
        gateway_on(p, database_url) as client,
        HealthServer(0, {}, host="127.0.0.1") as worker,
    ):
        job_id = await run_pack(p, client)
        async with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            assert "pack_completed" in "".join([line async for line in stream.aiter_lines()])
        from_gateway = await client.get("/metrics")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.port}") as scraper:
            from_worker = await scraper.get("/metrics")

    assert from_gateway.status_code == from_worker.status_code == 200
    assert from_gateway.headers["content-type"].startswith("text/plain")
    for body in (from_gateway.text, from_worker.text):
        samples = {
            line.split("{")[0].split(" ")[0]
            for line in body.splitlines()
            if line and not line.startswith("#")
        }
        for name in (
            "imagegen_http_requests_total",
            "imagegen_jobs_total",
            "imagegen_queue_wait_seconds_bucket",
            "imagegen_budget_consumed_usd_total",
            "imagegen_sse_connections",
        ):
            assert name in samples, (name, sorted(s for s in samples if "imagegen" in s))
    assert 'route="/api/generate"' in from_gateway.text
    assert 'status="queued"' in from_gateway.text
    assert 'tier="realtime"' in from_gateway.text  # the jobs topic's queue wait
