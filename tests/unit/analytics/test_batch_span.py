"""The agent's span: one per batch of events, linked to each event's own trace."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.analytics.app import batch_span

TRACES = ["0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"]


def _event(headers: Any) -> Any:
    return SimpleNamespace(message=SimpleNamespace(headers=headers))


def test_one_span_per_batch_links_every_traced_event(spans: InMemorySpanExporter) -> None:
    events = [
        _event([("traceparent", f"00-{TRACES[0]}-b7ad6b7169203331-01".encode())]),
        _event({"traceparent": f"00-{TRACES[1]}-00f067aa0ba902b7-01"}),
        _event([]),  # no trace: counted, not linked
        _event(None),
    ]
    with batch_span(cast(Any, events)) as span:
        span.set_attribute("imagegen.analytics.counted", 4)
    (exported,) = spans.get_finished_spans()
    assert exported.name == "analytics count" and exported.kind == SpanKind.CONSUMER
    assert exported.attributes is not None
    assert exported.attributes["messaging.batch.message_count"] == 4
    assert exported.attributes["imagegen.analytics.counted"] == 4
    linked = [f"{link.context.trace_id:032x}" for link in exported.links]
    assert linked == TRACES
    assert f"{exported.context.trace_id:032x}" not in TRACES  # a trace of its own
