from __future__ import annotations

import asyncio
import uuid

from services.gateway.routes.streams import follow
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway

TYPES_OF_A_TWO_PACK = [
    "generation_queued",
    "generation_queued",
    "generation_started",
    "image_stored",
    "generation_started",
    "image_stored",
    "pack_completed",
]


async def _stream(
    gateway: Gateway,
    user: str,
    job: str,
    last_event_id: object = None,
    params: dict[str, str] | None = None,
) -> list[dict[str, object]]:
    headers = gateway.auth(user)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", headers=headers, params=params
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return ev.parse_sse(response.text)


async def test_stream_runs_to_the_terminal_event(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(*ev.pack(job, user, 2))
    messages = await _stream(gateway, user, job)
    assert [m["event"] for m in messages] == TYPES_OF_A_TWO_PACK
    ids = [int(str(m["id"])) for m in messages]
    assert ids == sorted(ids)
    assert [m["data"]["seq"] for m in messages] == list(range(1, 8))  # type: ignore[index]
    assert all(m["data"]["job_id"] == job for m in messages)  # type: ignore[index]


async def test_resume_yields_exactly_the_rest_in_order(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(*ev.pack(job, user, 2))
    messages = await _stream(gateway, user, job)
    resumed = await _stream(gateway, user, job, last_event_id=messages[2]["id"])
    assert resumed == messages[3:]
    by_query = await _stream(gateway, user, job, params={"lastEventId": str(messages[4]["id"])})
    assert by_query == messages[5:]
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
    assert [m["event"] for m in ev.parse_sse(response.text)] == TYPES_OF_A_TWO_PACK


async def test_streams_of_other_users_jobs_are_404(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", headers=gateway.auth("intruder")
    )
    assert response.status_code == 404
    response = await gateway.client.get(
        f"/api/v1/jobs/{uuid.uuid4()}/events", headers=gateway.auth(user)
    )
    assert response.status_code == 404


async def test_bad_last_event_id_is_422(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    response = await gateway.client.get(
        f"/api/v1/jobs/{job}/events", headers={**gateway.auth(user), "Last-Event-ID": "abc"}
    )
    assert response.status_code == 422


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
