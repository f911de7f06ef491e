"""An SSE stream's request span (imagegen/telemetry_asgi.py): it ends when the stream is
answered, and the stream runs on with only the span's ids current (for its logs)."""

from __future__ import annotations

import asyncio
import gc
import secrets

from opentelemetry import trace
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import Message, Receive, Scope, Send

from imagegen.telemetry_asgi import TelemetryMiddleware
from services.gateway.routes.streams import is_event_stream

# A trace of this module's own: spans other tests left alive in the process (a background
# task, an exporter's queue) are not this test's to count.
TRACEPARENT = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
TRACE_ID = int(TRACEPARENT.split("-")[1], 16)


def _scope(path: str) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": [(b"traceparent", TRACEPARENT.encode())],
    }


class _Streaming:
    """An app that answers, then streams for a while, noting what span is current."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, trace.SpanContext]] = []
        """(recording?, ids) of the current span when answering and while streaming."""
        self.exported_while_streaming = -1
        self.live_spans = -1
        self.exported: list[tuple[trace.SpanKind, dict[str, object], object]] = []
        self.spans: InMemorySpanExporter | None = None

    def _note(self) -> None:
        current = trace.get_current_span()
        self.seen.append((current.is_recording(), current.get_span_context()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._note()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0)
        self._note()
        assert self.spans is not None
        self.exported_while_streaming = len(self.spans.get_finished_spans())
        self.exported = [
            (span.kind, dict(span.attributes or {}), span.get_span_context())
            for span in self.spans.get_finished_spans()
        ]
        self.spans.clear()  # the exporter's reference gone: who else holds a span now?
        gc.collect()
        self.live_spans = sum(
            1
            for o in gc.get_objects()
            if isinstance(o, SdkSpan) and o.get_span_context().trace_id == TRACE_ID
        )
        await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": False})


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


async def _drop(message: Message) -> None:
    return None


def test_only_the_event_streams_are_picked() -> None:
    assert is_event_stream(_scope("/api/v1/events"))
    assert is_event_stream(_scope("/api/v1/jobs/j1/events"))
    assert not is_event_stream(_scope("/api/v1/jobs/j1"))
    assert not is_event_stream({**_scope("/api/v1/events"), "method": "POST"})


async def test_a_streams_span_ends_when_it_is_answered(spans: InMemorySpanExporter) -> None:
    app = _Streaming()
    app.spans = spans
    middleware = TelemetryMiddleware(app, service="gateway", streams=is_event_stream)
    await middleware(_scope("/api/v1/events"), _nothing, _drop)

    assert app.exported_while_streaming == 1  # exported while the stream still ran
    assert app.live_spans == 0  # and no longer held by anyone while it ran on
    ((kind, attributes, context),) = app.exported
    assert kind is trace.SpanKind.SERVER and attributes["http.response.status_code"] == 200
    assert isinstance(context, trace.SpanContext)
    assert format(context.trace_id, "032x") == TRACEPARENT.split("-")[1]  # joins the caller's
    # The stream runs on with the same ids current (its logs), but no live span.
    assert app.seen == [(True, context), (False, context)]
    assert trace.get_current_span().get_span_context() != context  # nothing left behind


async def test_other_requests_keep_their_span_to_the_end(spans: InMemorySpanExporter) -> None:
    app = _Streaming()
    app.spans = spans
    middleware = TelemetryMiddleware(app, service="gateway", streams=is_event_stream)
    await middleware(_scope("/api/v1/jobs/j1"), _nothing, _drop)
    assert app.exported_while_streaming == 0
    (span,) = spans.get_finished_spans()
    assert app.seen == [(True, span.get_span_context())] * 2
