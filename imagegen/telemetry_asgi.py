"""HTTP telemetry for an ASGI app: one server span per request, the requests counter, and a
log context; the app serves `/metrics` itself.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware) so streamed responses (SSE)
pass through untouched. The span is current while the app runs, so whatever the request
publishes carries its `traceparent` and joins its trace.

An event stream (the requests `streams` picks, which FastAPI's own telemetry must leave
out) is one request that may last hours: its span ends when the stream is answered, and
the stream runs on with only the span's context current (its logs keep the trace and span
ids), so an open stream holds no span and its trace is exported at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen.logging_setup import log_context
from imagegen.metrics import instruments
from imagegen.telemetry import SERVICE_ATTRIBUTE, tracer

UNMATCHED_ROUTE = "unmatched"
"""The route label of requests no route matched (keeps scanners from minting labels)."""


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return f"{scope.get('root_path', '')}{path}" if scope.get("root_path") else path
    return UNMATCHED_ROUTE


class TelemetryMiddleware:
    """Server span, `imagegen_http_requests` (route template, method, status), log context.

    FastAPI (0.165+) opens its own server span around the app when a tracer provider is
    installed: that one is annotated instead of opening a second, unrelated one.
    """

    def __init__(
        self, app: ASGIApp, service: str, streams: Callable[[Scope], bool] | None = None
    ) -> None:
        self.app = app
        self.service = service
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (
            self.streams is not None
            and self.streams(scope)
            and not trace.get_current_span().is_recording()
        ):
            with log_context(service=self.service):
                await self._stream(scope, receive, send)
            return
        method: str = scope["method"]
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with log_context(service=self.service), self._span(scope) as (span, own):
            span.set_attribute(SERVICE_ATTRIBUTE, self.service)
            try:
                await self.app(scope, receive, send_and_note)
            finally:
                route = _route_of(scope)
                if own:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                instruments().requests.add(
                    1, {"route": route, "method": method, "status": str(status)}
                )

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An event stream: its span ends once the stream is answered (see the docstring)."""
        method: str = scope["method"]
        status = 500
        held = [self._start(scope)]  # the only reference: gone once the span has ended
        task = asyncio.current_task()
        tokens = [otel_context.attach(trace.set_span_in_context(held[0]))]

        def finish(error: BaseException | None = None) -> None:
            if not held:
                return
            span, route = held.pop(), _route_of(scope)
            span.update_name(f"{method} {route}")
            span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if error is not None:
                span.record_exception(error)
            if error is not None or status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            instruments().requests.add(1, {"route": route, "method": method, "status": str(status)})

        async def send_and_finish(message: Message) -> None:
            nonlocal status
            if message["type"] != "http.response.start" or not held:
                await send(message)
                return
            status = int(message["status"])
            await send(message)
            ids = NonRecordingSpan(held[0].get_span_context())
            finish()
            if asyncio.current_task() is task:  # only then is the request's context ours
                # The span's ids stay current for the stream's logs, the span itself goes:
                # back to the caller's context first (a token keeps the context it replaced).
                otel_context.detach(tokens.pop())
                tokens.append(otel_context.attach(trace.set_span_in_context(ids)))

        try:
            await self.app(scope, receive, send_and_finish)
        except BaseException as exc:
            finish(exc)
            raise
        finally:
            finish()
            for token in reversed(tokens):
                otel_context.detach(token)

    def _start(self, scope: Scope) -> Span:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        return tracer().start_span(
            f"{scope['method']} {scope['path']}",
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": scope["method"],
                "url.path": scope["path"],
                SERVICE_ATTRIBUTE: self.service,
            },
        )

    @contextmanager
    def _span(self, scope: Scope) -> Iterator[tuple[Span, bool]]:
        """FastAPI's own server span when it made one (0.165+), else ours (True)."""
        current = trace.get_current_span()
        if current.is_recording():
            yield current, False
            return
        with trace.use_span(self._start(scope), end_on_exit=True) as span:
            yield span, True
