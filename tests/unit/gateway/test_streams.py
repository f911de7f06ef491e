from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import ValidationError

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import JobStatus
from services.gateway.app import create_app
from services.gateway.auth import STREAM_SCOPE, issue_token
from services.gateway.notify import CHANNEL, LocalEventSignal, PgEventSignal
from services.gateway.routes.streams import QUEUE_EVENT, follow
from services.gateway.settings import GatewaySettings
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway, gateway_settings, running_gateway
from tests.unit.gateway.listen_support import drop_listeners

TYPES_OF_A_TWO_PACK = [
    "generation_queued",
    "generation_queued",
    "generation_started",
    "image_stored",
    "generation_started",
    "image_stored",
    "pack_completed",
]


def _messages(text: str) -> list[dict[str, Any]]:
    """The stream's logged events without the reconnection hint (sent once per connection)
    and without the id-less queue_status messages (test_queue_and_live.py covers those)."""
    messages = [m for m in ev.parse_sse(text) if m.get("event") != QUEUE_EVENT]
    for message in messages:
        message.pop("retry", None)
    return messages


async def _stream(
    gateway: Gateway,
    user: str,
    job: str,
    last_event_id: object = None,
    params: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    headers = gateway.auth(user)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", headers=headers, params=params
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return _messages(response.text)


def _stream_token(gateway: Gateway, user: str, ttl: int = 60) -> str:
    return issue_token(gateway.settings.jwt_secret, user, "paid", ttl, scope=STREAM_SCOPE)


@asynccontextmanager
async def _replica(database_url: str, **overrides: Any) -> AsyncIterator[Gateway]:
    """Another gateway process on the same database, with its own broker (so it projects
    nothing of what the first one is fed) and the real LISTEN/NOTIFY signal."""
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    settings = gateway_settings(database_url).model_copy(update=overrides)
    app = create_app(
        settings,
        publisher=broker.publisher(),
        consumer_factory=broker.consumer,
        blob_store=blobs,
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://replica.test") as client,
    ):
        yield Gateway(app, client, broker, blobs, settings)


async def test_stream_runs_to_the_terminal_event(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(*ev.pack(job, user, 2))
    response = await gateway.client.get(f"/api/v1/jobs/{job}/events", headers=gateway.auth(user))
    raw = ev.parse_sse(response.text)
    # The first message tells the browser how soon to reconnect; the others don't repeat it.
    assert raw[0]["retry"] == str(gateway.settings.sse_retry_ms)
    assert all("retry" not in m for m in raw[1:])
    messages = _messages(response.text)
    assert [m["event"] for m in messages] == TYPES_OF_A_TWO_PACK
    ids = [int(str(m["id"])) for m in messages]
    assert ids == sorted(ids)
    assert [m["data"]["seq"] for m in messages] == list(range(1, 8))
    assert all(m["data"]["job_id"] == job for m in messages)


async def test_resume_yields_exactly_the_rest_in_order(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(*ev.pack(job, user, 2))
    messages = await _stream(gateway, user, job)
    resumed = await _stream(gateway, user, job, last_event_id=messages[2]["id"])
    assert resumed == messages[3:]
    by_query = await _stream(gateway, user, job, params={"lastEventId": str(messages[4]["id"])})
    assert by_query == messages[5:]
    # The header wins over the query: a browser's reconnect sends the newer id in it.
    both = await _stream(
        gateway,
        user,
        job,
        last_event_id=messages[5]["id"],
        params={"lastEventId": str(messages[1]["id"])},
    )
    assert both == messages[6:]
    # Resuming after the terminal event ends at once instead of hanging.
    assert await _stream(gateway, user, job, last_event_id=messages[-1]["id"]) == []


async def test_stream_delivers_events_as_they_arrive(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    token = (await gateway.client.post("/api/v1/stream-tokens", headers=gateway.auth(user))).json()[
        "token"
    ]
    reading = asyncio.create_task(
        gateway.client.get(f"/api/v1/jobs/{job}/events", params={"stream_token": token})
    )
    for event in ev.pack(job, user, 2):
        await gateway.feed(event)
        await asyncio.sleep(0.01)
    response = await asyncio.wait_for(reading, 5)
    assert response.status_code == 200
    assert [m["event"] for m in _messages(response.text)] == TYPES_OF_A_TWO_PACK


async def test_heartbeats_are_comments(gateway_db_url: str, user: str) -> None:
    async with _replica(gateway_db_url, sse_ping_s=0.05) as gateway:
        job = await gateway.generate(user, 1)
        reading = asyncio.create_task(
            gateway.client.get(f"/api/v1/jobs/{job}/events", headers=gateway.auth(user))
        )
        await asyncio.sleep(0.5)  # ten heartbeat intervals with nothing to say
        await gateway.feed(*ev.pack(job, user, 1))
        response = await asyncio.wait_for(reading, 5)
    comments = [line for line in response.text.splitlines() if line.startswith(":")]
    assert comments and all(c.startswith(": ping") for c in comments)
    assert [m["event"] for m in _messages(response.text)][-1] == "pack_completed"


async def test_another_replica_streams_live_via_notify(
    gateway: Gateway, gateway_db_url: str, user: str
) -> None:
    """Events projected by one replica reach a stream on another at once, not at its poll."""
    job = await gateway.generate(user, 2)
    async with _replica(gateway_db_url, sse_poll_s=3600) as other:
        signal = other.state.signal
        assert isinstance(signal, PgEventSignal) and signal.connected
        events = ev.pack(job, user, 2)
        await gateway.feed(events[0])
        stream = follow(other.state, user, job, 0)
        try:
            first = await asyncio.wait_for(anext(stream), 5)
            assert first.event == "generation_queued"
            for event in events[1:]:
                waiting = asyncio.ensure_future(anext(stream))
                await asyncio.sleep(0.01)
                assert not waiting.done()
                await gateway.feed(event)
                # Only a NOTIFY can wake it: the replica's safety-net re-read is an hour away.
                message = await asyncio.wait_for(waiting, 10)
                assert message.event == event.model_dump()["type"]
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(stream), 5)
        finally:
            await stream.aclose()
        assert signal.notifications >= len(events) - 1


async def test_listener_reconnects_and_wakes_every_stream(gateway_db_url: str) -> None:
    local = LocalEventSignal()
    async with PgEventSignal(gateway_db_url, local=local, reconnect_s=0.05) as signal:
        assert signal.connected and signal.connects == 1
        woken = signal.listen("someone")
        admin = await asyncpg.connect(gateway_db_url)
        try:
            await drop_listeners(gateway_db_url, admin)
            # Notifications sent while it was away are lost: the reconnect wakes everyone.
            await asyncio.wait_for(woken.wait(), 10)
            assert signal.connects >= 2
            assert await signal.wait_connected(10)
            again = signal.listen("someone")
            await admin.execute("SELECT pg_notify($1, 'someone')", CHANNEL)
            await asyncio.wait_for(again.wait(), 10)
        finally:
            await admin.close()
    assert not signal.connected


async def test_cancelled_job_stream_waits_for_the_closing_event(
    gateway: Gateway, user: str
) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(
        ev.queued(job, user, 0, 2), ev.started(job, user, 0), ev.cancelled(job, user)
    )
    stream = follow(gateway.state, user, job, 0)
    try:
        seen = [(await asyncio.wait_for(anext(stream), 5)).event for _ in range(3)]
        assert seen == ["generation_queued", "generation_started", "job_cancelled"]
        # Images that were running still report, then the job's closing event ends it.
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await gateway.feed(
            ev.failed(job, user, 0, final=True),
            ev.pack_completed(job, user, 2, 0, 1, JobStatus.CANCELLED),
        )
        assert (await asyncio.wait_for(waiting, 5)).event == "generation_failed"
        assert (await asyncio.wait_for(anext(stream), 5)).event == "pack_completed"
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 5)
    finally:
        await stream.aclose()


async def test_cancelled_job_without_closing_event_ends_after_the_grace(
    gateway_db_url: str, user: str
) -> None:
    async with _replica(gateway_db_url, sse_cancel_grace_s=0) as gateway:
        job = await gateway.generate(user, 1)
        await gateway.feed(ev.queued(job, user, 0, 1), ev.cancelled(job, user))
        messages = await _stream(gateway, user, job)
    assert [m["event"] for m in messages] == ["generation_queued", "job_cancelled"]


async def test_streams_of_other_users_jobs_are_404(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", headers=gateway.auth("intruder")
    )
    assert response.status_code == 404
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", params={"stream_token": _stream_token(gateway, "intruder")}
    )
    assert response.status_code == 404
    response = await gateway.client.get(
        f"/api/v1/jobs/{uuid.uuid4()}/events", headers=gateway.auth(user)
    )
    assert response.status_code == 404


async def test_stream_tokens_are_checked(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    path = f"/api/v1/jobs/{job}/events"
    # An access token is not a stream token: a leaked URL must not carry API access.
    response = await gateway.client.get(path, params={"stream_token": gateway.token(user)})
    assert response.status_code == 401 and "stream_token" in response.json()["detail"]
    expired = _stream_token(gateway, user, ttl=-1)
    response = await gateway.client.get(path, params={"stream_token": expired})
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    tampered = _stream_token(gateway, user)[:-2] + "xx"
    response = await gateway.client.get(path, params={"stream_token": tampered})
    assert response.status_code == 401
    # Nor is a stream token an access token.
    response = await gateway.client.get(
        f"/api/generate/{job}", headers={"Authorization": f"Bearer {_stream_token(gateway, user)}"}
    )
    assert response.status_code == 401
    assert (await gateway.client.get(path)).status_code == 401
    assert (await gateway.client.get("/api/v1/events")).status_code == 401


async def test_bad_last_event_id_is_422(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", headers={**gateway.auth(user), "Last-Event-ID": "abc"}
    )
    assert response.status_code == 422
    assert "Last-Event-ID" in response.text
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", headers=gateway.auth(user), params={"lastEventId": "-1"}
    )
    assert response.status_code == 422
    assert "lastEventId" in response.text


async def test_user_stream_spans_jobs_and_resumes(gateway: Gateway, user: str) -> None:
    first, second = await gateway.generate(user, 1), await gateway.generate(user, 1)
    other = await gateway.generate("someone-else", 1)
    await gateway.feed(ev.queued(first, user, 0, 1), ev.queued(other, "someone-else", 0, 1))

    stream = follow(gateway.state, user, None, 0)
    try:
        one = await asyncio.wait_for(anext(stream), 2)
        assert one.event == "generation_queued"
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await gateway.feed(ev.queued(second, user, 0, 1))
        two = await asyncio.wait_for(waiting, 2)
        assert '"job_id":"' + second in str(two.data).replace(" ", "")
    finally:
        await stream.aclose()

    resumed = follow(gateway.state, user, None, int(str(one.id)))
    try:
        again = await asyncio.wait_for(anext(resumed), 2)
        assert again.id == two.id
    finally:
        await resumed.aclose()


async def test_events_past_the_log_retention_are_pruned_and_the_job_stream_still_ends(
    gateway: Gateway, gateway_db_url: str, user: str
) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(*ev.pack(job, user, 2))
    pool = gateway.app.state.gateway.pool
    await pool.execute(
        "UPDATE events SET created_at = now() - interval '60 days' WHERE job_id = $1", job
    )
    async with running_gateway(gateway_db_url):  # a replica starting up prunes at once
        async with asyncio.timeout(10):
            while await pool.fetchval("SELECT count(*) FROM events WHERE job_id = $1", job):
                await asyncio.sleep(0.05)
    # No history left to replay, but the stream still knows the job is over and ends.
    assert await _stream(gateway, user, job) == []
    record = (await gateway.client.get(f"/api/v1/jobs/{job}", headers=gateway.auth(user))).json()
    assert record["status"] == "completed" and len(record["images"]) == 2


def test_the_event_log_retention_cannot_be_shorter_than_the_replay_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert GatewaySettings().event_log_retention_s == 51 * 24 * 3600
    monkeypatch.setenv("IMAGEGEN_EVENT_LOG_RETENTION_S", str(7 * 24 * 3600))
    with pytest.raises(ValidationError, match="IMAGEGEN_EVENT_LOG_RETENTION_S=604800 is"):
        GatewaySettings()
