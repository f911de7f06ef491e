"""Webhooks: signing and verification, SSRF refusal, and delivery to a real local HTTP
receiver (uvicorn on loopback, allowed through the allow-list) from a gateway running
against a real PostgreSQL: one signed terminal webhook, retries with backoff visible in
the job record, and giving up after the last attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import JobStatus
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import WebhookSignatureError, verify_signature
from services.gateway.webhooks.signing import signed_headers
from services.gateway.webhooks.targets import TargetPolicy, WebhookUrlError, check_url, resolve
from tests.fixtures.http_server import serve_app
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway, gateway_settings

SECRET = "whsec-test-0123456789abcdef"

# --- signing ------------------------------------------------------------------------------


def test_a_signed_body_verifies_and_any_change_is_refused() -> None:
    body = b'{"type":"pack_completed","job_id":"j1"}'
    headers = signed_headers(SECRET, "whd_1", body, now=1_700_000_000)
    assert headers["Webhook-Signature"].startswith("v1,")
    verify_signature(SECRET, headers, body, now=1_700_000_010)
    # Header names are case-insensitive; a rotated-out signature beside the good one is fine.
    lowered = {k.lower(): v for k, v in headers.items()}
    lowered["webhook-signature"] = "v1,AAAA " + lowered["webhook-signature"]
    verify_signature(SECRET, lowered, body, now=1_700_000_010)
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_signature(SECRET, headers, body.replace(b"j1", b"j2"), now=1_700_000_010)
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_signature("another-secret-of-16+", headers, body, now=1_700_000_010)
    forged_id = {**headers, "Webhook-Id": "whd_2"}
    with pytest.raises(WebhookSignatureError, match="no signature matches"):
        verify_signature(SECRET, forged_id, body, now=1_700_000_010)


def test_timestamps_outside_the_replay_window_are_refused() -> None:
    body = b"{}"
    headers = signed_headers(SECRET, "whd_1", body, now=1_700_000_000)
    verify_signature(SECRET, headers, body, now=1_700_000_300)  # exactly at the edge
    with pytest.raises(WebhookSignatureError, match="replay window"):
        verify_signature(SECRET, headers, body, now=1_700_000_301)
    with pytest.raises(WebhookSignatureError, match="replay window"):
        verify_signature(SECRET, headers, body, now=1_699_999_000)  # from the future
    with pytest.raises(WebhookSignatureError, match="replay window"):
        verify_signature(SECRET, headers, body, tolerance_s=10, now=1_700_000_011)
    with pytest.raises(WebhookSignatureError, match="missing"):
        verify_signature(SECRET, {"Webhook-Id": "x"}, body)


# --- SSRF -----------------------------------------------------------------------------------

PROD = TargetPolicy.of([], "prod")
DEV = TargetPolicy.of([], "dev")


@pytest.mark.parametrize(
    "url",
    [
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://127.0.0.1:8443/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fe80::1]/hook",
        "https://224.0.0.1/hook",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://localhost/hook",
        "https://api.localhost/hook",
    ],
)
def test_production_refuses_internal_addresses_which_dev_allows(url: str) -> None:
    with pytest.raises(WebhookUrlError, match="public addresses only"):
        check_url(url, PROD)
    check_url(url, DEV)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/hook", "must use https"),
        ("http://127.0.0.1:9000/hook", "must use https"),
        ("ftp://example.com/hook", "absolute https"),
        ("/relative/hook", "absolute https"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https://exa mple.com/hook", "spaces or control"),
        ("https://example.com:99999/hook", "not a valid URL"),
    ],
)
def test_urls_refused_everywhere(url: str, reason: str) -> None:
    for policy in (DEV, PROD):
        with pytest.raises(WebhookUrlError, match=reason):
            check_url(url, policy)


def test_the_allow_list_admits_http_and_internal_hosts() -> None:
    allowed = TargetPolicy.of(["127.0.0.1", "Hooks.Internal"], "prod")
    check_url("http://127.0.0.1:9000/hook", allowed)
    check_url("http://hooks.internal/hook", allowed)
    check_url("https://93.184.216.34/hook", PROD)  # a public address is fine


async def test_delivery_time_resolution_refuses_names_that_point_inside() -> None:
    name = socket.gethostname()
    resolved = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    if all(ipaddress.ip_address(str(a)).is_global for a in resolved):
        pytest.skip(f"{name} resolves to public addresses here")
    url = f"https://{name}/hook"
    check_url(url, PROD)  # a name passes the request-time check ...
    with pytest.raises(WebhookUrlError, match="resolves to"):
        await resolve(url, PROD)  # ... but not the check made when sending
    target = await resolve(url, DEV)
    assert target.host_header == name and target.sni_hostname == name
    assert ipaddress.ip_address(target.url.split("//")[1].split("/")[0].strip("[]"))


# --- delivery to a real receiver -------------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint: answers the scripted statuses in turn (then 200)."""

    statuses: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.received.append((dict(request.headers), body, time.time()))
            status = self.statuses.pop(0) if self.statuses else 200
        return Response(status_code=status)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    app = Starlette(routes=[Route("/hook", hook.endpoint, methods=["POST"])])
    with serve_app(app) as url:
        hook.url = f"{url}/hook"
        yield hook


def _settings(database_url: str, **overrides: Any) -> GatewaySettings:
    base = gateway_settings(database_url)
    values: dict[str, Any] = {
        "webhook_allowed_hosts": ["127.0.0.1"],
        "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_poll_s": 0.05,
        "webhook_timeout_s": 2.0,
        "webhook_max_attempts": 3,
    }
    return base.model_copy(update=values | overrides)


@asynccontextmanager
async def _gateway(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    app = create_app(
        settings, publisher=broker.publisher(), consumer_factory=broker.consumer, blob_store=blobs
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client,
    ):
        yield Gateway(app, client, broker, blobs, settings)


async def _pack_with_webhook(gw: Gateway, user: str, webhook: dict[str, Any]) -> str:
    character = await gw.create_character(user)
    response = await gw.client.post(
        "/api/generate",
        json={"character_id": character["id"], "image_count": 1, "webhook": webhook},
        headers=gw.auth(user),
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def _job(gw: Gateway, user: str, job_id: str) -> dict[str, Any]:
    response = await gw.client.get(f"/api/v1/jobs/{job_id}", headers=gw.auth(user))
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def _until(gw: Gateway, user: str, job_id: str, states: set[str]) -> dict[str, Any]:
    """The job record once every delivery is in one of `states` (5 s at most)."""
    for _ in range(500):
        job = await _job(gw, user, job_id)
        deliveries = job["webhook"]["deliveries"]
        if deliveries and all(d["state"] in states for d in deliveries):
            return job
        await asyncio.sleep(0.01)
    raise AssertionError(f"deliveries never reached {states}: {job['webhook']}")


def _finish(job_id: str, user: str) -> list[Any]:
    return [
        ev.queued(job_id, user, 0, 1),
        ev.stored(job_id, user, 0),
        ev.pack_completed(job_id, user, 1, 1, 0, JobStatus.COMPLETED),
    ]


async def test_a_finished_job_posts_one_signed_terminal_webhook(
    gateway_db_url: str, receiver: Receiver, user: str
) -> None:
    async with _gateway(_settings(gateway_db_url)) as gw:
        job_id = await _pack_with_webhook(gw, user, {"url": receiver.url, "secret": SECRET})
        await gw.feed(*_finish(job_id, user))
        job = await _until(gw, user, job_id, {"delivered"})
        await asyncio.sleep(0.3)  # a few dispatcher cycles: nothing more is sent
    assert len(receiver.received) == 1
    headers, body, _ = receiver.received[0]
    verify_signature(SECRET, headers, body)
    payload = json.loads(body)
    assert payload["type"] == "pack_completed" and payload["job_id"] == job_id
    assert payload["data"]["status"] == "completed" and payload["data"]["completed_count"] == 1
    (delivery,) = job["webhook"]["deliveries"]
    assert delivery["id"] == headers["webhook-id"] and delivery["eventType"] == "pack_completed"
    assert delivery["attempts"] == 1 and delivery["nextAttemptAt"] is None
    assert [a["statusCode"] for a in delivery["log"]] == [200]
    assert job["webhook"]["url"] == receiver.url and job["webhook"]["events"] == ["terminal"]
    assert SECRET not in json.dumps(job)


async def test_failures_are_retried_with_backoff_and_shown_in_the_job_record(
    gateway_db_url: str, receiver: Receiver, user: str
) -> None:
    receiver.statuses = [500, 503]
    async with _gateway(_settings(gateway_db_url)) as gw:
        job_id = await _pack_with_webhook(gw, user, {"url": receiver.url, "secret": SECRET})
        await gw.feed(*_finish(job_id, user))
        job = await _until(gw, user, job_id, {"delivered"})
    (delivery,) = job["webhook"]["deliveries"]
    assert delivery["attempts"] == 3
    assert [a["statusCode"] for a in delivery["log"]] == [500, 503, 200]
    assert [a["error"] for a in delivery["log"]] == ["HTTP 500", "HTTP 503", None]
    assert [a["attempt"] for a in delivery["log"]] == [1, 2, 3]
    assert delivery["state"] == "delivered" and delivery["deliveredAt"] is not None
    # Every attempt is signed afresh under the same Webhook-Id, after a growing delay.
    assert len(receiver.received) == 3
    for headers, body, _ in receiver.received:
        assert headers["webhook-id"] == delivery["id"]
        verify_signature(SECRET, headers, body)
    sent_at = [t for _, _, t in receiver.received]
    assert sent_at[1] - sent_at[0] >= 0.05 and sent_at[2] - sent_at[1] >= 0.1


async def test_a_receiver_that_always_fails_gets_the_maximum_attempts(
    gateway_db_url: str, receiver: Receiver, user: str
) -> None:
    receiver.statuses = [500] * 10
    async with _gateway(_settings(gateway_db_url, webhook_secret=SecretStr(SECRET))) as gw:
        job_id = await _pack_with_webhook(gw, user, {"url": receiver.url})  # server's secret
        await gw.feed(*_finish(job_id, user))
        job = await _until(gw, user, job_id, {"failed"})
        await asyncio.sleep(0.3)
    (delivery,) = job["webhook"]["deliveries"]
    assert delivery["attempts"] == 3 and delivery["nextAttemptAt"] is None
    assert [a["error"] for a in delivery["log"]] == ["HTTP 500"] * 3
    assert len(receiver.received) == 3
    verify_signature(SECRET, receiver.received[0][0], receiver.received[0][1])


async def test_refused_webhooks_are_422s_naming_the_field_and_record_nothing(
    gateway_db_url: str, user: str
) -> None:
    async with _gateway(_settings(gateway_db_url, webhook_allowed_hosts=[])) as gw:
        character = await gw.create_character(user)
        cases = [
            ({"url": "http://127.0.0.1:9/hook", "secret": SECRET}, ["webhook", "url"]),
            ({"url": "https://example.com/h", "events": ["image"], "secret": SECRET}, "events"),
            ({"url": "https://example.com/h"}, ["webhook", "secret"]),
            ({"url": "https://example.com/h", "secret": "short"}, "secret"),
            ({"url": "https://example.com/h", "secret": SECRET, "extra": 1}, "extra"),
        ]
        for webhook, at in cases:
            response = await gw.client.post(
                "/api/generate",
                json={"character_id": character["id"], "image_count": 1, "webhook": webhook},
                headers=gw.auth(user),
            )
            assert response.status_code == 422, response.text
            loc = response.json()["detail"][0]["loc"]
            if isinstance(at, list):
                assert loc == ["body", *at]
            else:
                assert loc[:2] == ["body", "webhook"] and at in loc
        jobs = await gw.client.get("/api/v1/jobs", headers=gw.auth(user))
        assert jobs.json()["items"] == []


async def test_portrait_requests_take_a_webhook_and_images_are_sent_when_asked(
    gateway_db_url: str, receiver: Receiver, user: str
) -> None:
    async with _gateway(_settings(gateway_db_url)) as gw:
        character = await gw.create_character(user)
        hook = {"url": receiver.url, "secret": SECRET, "events": ["terminal", "image"]}
        response = await gw.client.post(
            "/api/v1/images/characters",
            json={"characterId": character["id"], "style": "watercolor", "webhook": hook},
            headers=gw.auth(user),
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["jobId"]
        await gw.feed(
            ev.stored(job_id, user, 0),
            ev.pack_completed(job_id, user, 1, 1, 0, JobStatus.COMPLETED),
        )
        job = await _until(gw, user, job_id, {"delivered"})
    types = [d["eventType"] for d in job["webhook"]["deliveries"]]
    assert types == ["image_stored", "pack_completed"]
    bodies = sorted(json.loads(b)["type"] for _, b, _ in receiver.received)
    assert bodies == ["image_stored", "pack_completed"]


async def test_two_replicas_send_each_delivery_once(
    gateway_db_url: str, receiver: Receiver, user: str
) -> None:
    settings = _settings(gateway_db_url)
    async with _gateway(settings) as first, _gateway(settings) as second:
        jobs = [
            await _pack_with_webhook(first, user, {"url": receiver.url, "secret": SECRET})
            for _ in range(8)
        ]
        await first.feed(*(ev.pack_completed(j, user, 1, 1, 0, JobStatus.COMPLETED) for j in jobs))
        for job_id in jobs:
            await _until(second, user, job_id, {"delivered"})
        await asyncio.sleep(0.3)
    ids = [h["webhook-id"] for h, _, _ in receiver.received]
    assert len(ids) == 8 and len(set(ids)) == 8
