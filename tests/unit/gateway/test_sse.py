"""The lean SSE response (services/gateway/sse.py) and the feed's shared ticker: encoding,
a client that leaves, a broken connection, a slow reader, heartbeats without reads, and
the end of every stream when the server stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from starlette.types import Message

from services.gateway import sse
from services.gateway.routes.streams import follow
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway

SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "path": "/api/v1/events"}


def test_messages_are_encoded_once_as_sse() -> None:
    one = sse.message('{"a": 1}', event="image_stored", id="42")
    assert one.frame == b'id: 42\r\nevent: image_stored\r\ndata: {"a": 1}\r\n\r\n'
    assert (one.data, one.event, one.id, one.retry) == ('{"a": 1}', "image_stored", "42", None)
    # Several lines of data are several data fields of one message.
    assert sse.message("x\ny").frame == b"data: x\r\ndata: y\r\n\r\n"
    first = sse.with_retry(one, 1000)
    assert first.frame == b"retry: 1000\r\n" + one.frame and first.retry == 1000
    assert (first.data, first.event, first.id) == (one.data, one.event, one.id)
    assert sse.comment("ping - now").frame == b": ping - now\r\n\r\n"
    parsed = ev.parse_sse((first.frame + sse.comment("ping").frame + one.frame).decode())
    assert [m["id"] for m in parsed] == ["42", "42"] and parsed[0]["retry"] == "1000"


def test_the_streams_are_in_the_openapi_document(gateway: Gateway) -> None:
    paths = gateway.app.openapi()["paths"]
    for path in ("/api/v1/events", "/api/v1/jobs/{job_id}/events"):
        answer = paths[path]["get"]["responses"]["200"]
        assert list(answer["content"]) == ["text/event-stream"], path


class _Endless:
    """An endless stream of messages that records whether its cleanup ran."""

    def __init__(self) -> None:
        self.closed = False
        self.sent = 0

    async def messages(self) -> AsyncGenerator[sse.SseMessage, None]:
        try:
            while True:
                self.sent += 1
                yield sse.message(str(self.sent), id=str(self.sent))
                await asyncio.sleep(0.01)
        finally:
            self.closed = True


async def test_a_client_that_leaves_ends_the_stream_and_its_cleanup_runs() -> None:
    source = _Endless()
    bodies: list[bytes] = []
    left = asyncio.Event()

    async def receive() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])
            if len(bodies) == 3:
                left.set()

    response = sse.SseResponse(source.messages())
    # Returns by itself (no cancellation escapes) once the client is gone.
    await asyncio.wait_for(response(SCOPE, receive, send), 5)
    assert source.closed
    assert bodies[:3] == [sse.message(str(i), id=str(i)).frame for i in (1, 2, 3)]
    assert all(body != b"" for body in bodies)  # never a closing body to a gone client


async def test_a_connection_that_breaks_under_a_send_ends_the_stream() -> None:
    source = _Endless()
    never = asyncio.Event()

    async def receive() -> Message:
        await never.wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and source.sent == 2:
            raise OSError("connection reset")  # what an ASGI 2.4 server raises

    await asyncio.wait_for(sse.SseResponse(source.messages())(SCOPE, receive, send), 5)
    assert source.closed


async def test_a_cancellation_from_outside_still_propagates() -> None:
    source = _Endless()

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        return None

    task = asyncio.create_task(sse.SseResponse(source.messages())(SCOPE, receive, send))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert source.closed


async def test_a_finite_stream_ends_the_response() -> None:
    async def two() -> AsyncGenerator[sse.SseMessage, None]:
        yield sse.message("1", id="1")
        yield sse.message("2", id="2")

    sent: list[Message] = []

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(sse.SseResponse(two())(SCOPE, receive, send), 5)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert [m.get("more_body") for m in sent[1:]] == [True, True, False]


async def test_a_slow_reader_stalls_neither_others_nor_the_feed_and_catches_up(
    gateway: Gateway, user: str
) -> None:
    """A stream nobody reads (a client that stopped reading: its send blocks) holds its
    position, not the events; the others get every event at once; once read again it
    catches up from the log, in order, every event once."""
    state = gateway.state
    gateway.use_feed(max_age_s=2.0, keep=2, page=3)
    newest = await state.feed.newest_id(user)
    fast, slow = follow(state, user, None, newest), follow(state, user, None, newest)
    first_slow = asyncio.ensure_future(anext(slow))  # it takes one message, then stalls
    try:
        jobs = [await gateway.generate(user, 2) for _ in range(2)]
        events = [e for job in jobs for e in ev.pack(job, user, 2)]
        got = []
        for event in events:
            await gateway.feed(event)
            got.append(await asyncio.wait_for(anext(fast), 5))
        assert len(got) == len(events)
        first = await asyncio.wait_for(first_slow, 5)
        rest = [await asyncio.wait_for(anext(slow), 5) for _ in range(len(events) - 1)]
        assert [m.id for m in [first, *rest]] == [m.id for m in got]
    finally:
        first_slow.cancel()
        await asyncio.gather(first_slow, return_exceptions=True)
        await fast.aclose()
        await slow.aclose()
    assert state.feed.users == 0


async def test_ticks_wake_streams_without_reading_a_fresh_tail(gateway: Gateway, user: str) -> None:
    state = gateway.state
    feed = gateway.use_feed(max_age_s=3600)
    stream = follow(state, user, None, await feed.newest_id(user))
    waiting = asyncio.ensure_future(anext(stream))
    try:
        await asyncio.sleep(0.2)
        reads, ticks = feed.reads, feed.ticks
        await asyncio.sleep(4 * state.settings.sse_poll_s)
        assert feed.ticks >= ticks + 2  # the streams were woken...
        assert feed.reads == reads  # ...and the fresh tail served them without a query
        assert not waiting.done()
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await stream.aclose()
    assert feed.users == 0


async def test_server_shutdown_ends_every_stream_at_once(gateway: Gateway, user: str) -> None:
    state = gateway.state
    feed = gateway.use_feed(max_age_s=3600)
    stopping = False
    feed.exiting = lambda: stopping
    job = await gateway.generate(user, 1)
    streams = [follow(state, user, None, await feed.newest_id(user)) for _ in range(3)]
    streams.append(follow(state, user, job, 0))  # a job's stream that has not ended yet
    pending = [asyncio.ensure_future(anext(s)) for s in streams]
    try:
        await asyncio.sleep(0.2)
        assert not any(p.done() for p in pending)
        stopping = True
        done = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        assert all(isinstance(d, StopAsyncIteration) for d in done)
    finally:
        for p in pending:
            p.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for s in streams:
            await s.aclose()
    assert feed.closing and feed.users == 0
