"""A lean Server-Sent Events response: thousands of them stay open in one process.

`SseResponse` sends a stream of `SseMessage`s from the request's own task, whose bytes
are encoded once (an event's message is shared by every stream that sends it). Beside it
runs one small task that waits for the client's `http.disconnect` and ends the stream;
nothing else is per stream: no task group, no ping task, no lock, no shutdown event.
Heartbeats and the end of every stream at server shutdown come from the shared event
feed (see eventfeed.py), which wakes all streams at once.

A slow reader blocks only its own task, in `send`, once the server's write buffer for
its connection is full: it holds at most that buffer and its position in the log, and
catches up from the log when it drains.

The messages are sse-starlette's (`ServerSentEvent` encodes every frame). Its response,
`EventSourceResponse`, is not used for the streams: it runs a task group with a stream,
a disconnect and a shutdown task per connection, which at 2000 open streams cost 51.2 KiB
each by RSS against 32.2 KiB with this loop (`bench/sse_fanout.py`, same commit, quiet
machine, ping task off).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from sse_starlette import ServerSentEvent
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

MEDIA_TYPE = "text/event-stream"
_END = {"type": "http.response.body", "body": b"", "more_body": False}


@dataclass(frozen=True, slots=True, eq=False)
class SseMessage:
    """One SSE message and its encoded bytes (`frame`); fields as the client sees them."""

    frame: bytes
    data: str | None = None
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def message(
    data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> SseMessage:
    """An SSE message with its bytes encoded now (once, for every stream that sends it)."""
    frame = ServerSentEvent(data, event=event, id=id, retry=retry).encode()
    return SseMessage(frame, data, event, id, retry)


def with_retry(shared: SseMessage, retry_ms: int) -> SseMessage:
    """`shared` plus a reconnection hint, in the same message (a connection's first)."""
    frame = f"retry: {retry_ms}\r\n".encode() + shared.frame
    return SseMessage(frame, shared.data, shared.event, shared.id, retry_ms)


def comment(text: str) -> SseMessage:
    """A comment line (a heartbeat): clients ignore it, proxies see traffic."""
    return SseMessage(ServerSentEvent(comment=text).encode())


def server_exiting() -> bool:
    """True once the uvicorn server serving this process was asked to stop (SIGTERM,
    SIGINT, or its `should_exit` set by the service itself). Found through the signal
    handler uvicorn installs (a bound method of its `Server`); False when not under
    uvicorn (tests drive the app in process and close streams themselves)."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


class SseResponse(Response):
    """`text/event-stream` from an async generator of `SseMessage`s (see the module
    docstring). The generator is closed however the stream ends, so its `finally` runs."""

    media_type = MEDIA_TYPE

    def __init__(
        self,
        content: AsyncGenerator[SseMessage, None],
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,  # FastAPI's OpenAPI reads the default from the signature
    ) -> None:
        self.body_iterator = content
        self.status_code = status_code
        self.background = None
        self.init_headers(
            {
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
                "X-Accel-Buffering": "no",
                **(headers or {}),
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        messages = self.body_iterator
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if scope.get("method") == "HEAD":
                await send(_END)
                return
            await self._stream(messages, receive, send)
        finally:
            await messages.aclose()

    @staticmethod
    async def _stream(
        messages: AsyncGenerator[SseMessage, None], receive: Receive, send: Send
    ) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        left = False

        async def watch() -> None:
            nonlocal left
            with contextlib.suppress(Exception):  # a broken receive: the sends will tell
                while (await receive())["type"] != "http.disconnect":
                    pass
                left = True
                streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            async for sse in messages:
                await send({"type": "http.response.body", "body": sse.frame, "more_body": True})
            await send(_END)
        except asyncio.CancelledError:
            # The client left: a normal end, unless someone else cancelled us too.
            if not left or streaming.uncancel() > 0:
                raise
        except OSError:
            pass  # the connection broke under a send (ASGI 2.4 servers raise OSError)
        finally:
            watcher.cancel()  # not awaited: a cancellation arriving here must not be lost
