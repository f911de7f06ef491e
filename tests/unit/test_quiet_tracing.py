"""Spans while nothing exports them: ids only, the same ids and flags the SDK would give."""

from __future__ import annotations

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from imagegen.telemetry import QuietTracerProvider, ServiceAttribution

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def _quiet() -> QuietTracerProvider:
    """A provider as `configure_tracing` builds it: the attribution stamp and no export."""
    provider = QuietTracerProvider(resource=Resource.create({"service.name": "tests"}))
    provider.add_span_processor(ServiceAttribution())
    return provider


def _headers_inside(provider: TracerProvider, parent: Context | None) -> dict[str, str]:
    """The headers a message published inside a consumer span under `parent` would carry."""
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("t process", context=parent, kind=trace.SpanKind.CONSUMER):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    return carrier


def _fields(traceparent: str) -> tuple[str, str, str]:
    _, trace_id, span_id, flags = traceparent.split("-")
    return trace_id, span_id, flags


@pytest.mark.parametrize(
    "incoming",
    [
        {"traceparent": PARENT},
        {"traceparent": PARENT, "tracestate": "vendor=a1,other=b2"},
        {"traceparent": UNSAMPLED},
    ],
)
def test_a_quiet_span_continues_its_parents_trace_as_a_recorded_one_would(
    incoming: dict[str, str],
) -> None:
    parent = propagate.extract(incoming)
    quiet = _headers_inside(_quiet(), parent)
    recorded = _headers_inside(TracerProvider(), parent)

    trace_id, span_id, flags = _fields(quiet["traceparent"])
    assert (trace_id, flags) == _fields(recorded["traceparent"])[::2]
    assert (trace_id, flags) == _fields(incoming["traceparent"])[::2]
    assert span_id not in (_fields(incoming["traceparent"])[1], "0" * 16)
    assert quiet.get("tracestate") == recorded.get("tracestate") == incoming.get("tracestate")


def test_a_quiet_root_span_starts_a_sampled_trace_of_its_own() -> None:
    first = _fields(_headers_inside(_quiet(), None)["traceparent"])
    second = _fields(_headers_inside(_quiet(), None)["traceparent"])
    assert (
        first[2] == second[2] == _fields(_headers_inside(TracerProvider(), None)["traceparent"])[2]
    )
    assert first[0] != second[0] and "0" * 32 not in (first[0], second[0])


def test_the_providers_sampler_decides_a_quiet_root_span_as_it_would_a_recorded_one() -> None:
    never = ParentBased(TraceIdRatioBased(0.0))
    quiet = _fields(_headers_inside(QuietTracerProvider(sampler=never), None)["traceparent"])
    recorded = _fields(_headers_inside(TracerProvider(sampler=never), None)["traceparent"])
    assert quiet[2] == recorded[2]
    assert not int(quiet[2], 16) & 1  # not sampled


def test_nothing_is_recorded_until_a_processor_that_exports_is_added() -> None:
    provider = _quiet()
    handed_out = provider.get_tracer("tests")  # before the exporter, as services keep theirs
    quiet = handed_out.start_span("x")
    assert not quiet.is_recording()
    quiet.end()
    with handed_out.start_as_current_span("x") as current:
        assert not current.is_recording()
        assert trace.get_current_span() is current

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with handed_out.start_as_current_span("recorded", attributes={"n": 1}) as span:
        assert span.is_recording()
    (finished,) = exporter.get_finished_spans()
    assert (finished.name, dict(finished.attributes or {}).get("n")) == ("recorded", 1)


def test_an_exception_inside_a_quiet_span_is_raised_as_it_was() -> None:
    tracer = _quiet().get_tracer("tests")
    with pytest.raises(KeyError, match="lost"), tracer.start_as_current_span("x"):
        raise KeyError("lost")
