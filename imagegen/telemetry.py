"""Tracing and metrics set-up shared by every service (logs: `imagegen.logging_setup`).

Trace context travels in Kafka headers as W3C `traceparent`; each consumer continues it,
so one request is one trace across the five services. Spans carry `imagegen.service`
(the service whose code opened them) besides the resource's `service.name`, which lets
one process that runs several services (the tests) tell them apart.

Export: OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the signal's own
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`) is set, nothing otherwise.
Metrics are always readable by Prometheus from the process's `/metrics`.

While nothing exports spans (`QuietTracerProvider`), a span is only its ids: the trace
still travels and log lines still name it, but no span is built, stamped and ended for
nobody (a consumed record 53 -> 28 us; about 1 ms per image in each of the gateway and
the scheduler at a trickle, README Performance).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.util._decorator import _agnosticcontextmanager
from opentelemetry.util.types import Attributes
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from imagegen.logging_setup import LogFormat, current_service, set_process_service
from imagegen.logging_setup import configure_logging as _configure_logging
from imagegen.metrics import instruments

_TRACER_NAME = "imagegen"
SERVICE_ATTRIBUTE = "imagegen.service"
ENQUEUED_AT_HEADER = "imagegen-enqueued-at"
"""Epoch seconds at which a message was put on its way (staged in an outbox, or produced)."""
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

_JOBS_TOPIC = re.compile(r"\.jobs\.([a-z0-9_]+)\.v\d+$")
log = logging.getLogger(__name__)


def configure_logging(service: str, level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Log lines of the process to stderr: key=value text, or one JSON object per line."""
    _configure_logging(service, level, fmt)


def _otlp(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


class ServiceAttribution(SpanProcessor):
    """Stamps each span with the service whose code started it (see module docstring)."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        service = current_service()
        if service:
            span.set_attribute(SERVICE_ATTRIBUTE, service)

    def on_end(self, span: ReadableSpan) -> None:
        pass


class QuietTracerProvider(TracerProvider):
    """A tracer provider whose tracers build no span until a processor that exports is
    added (anything but `ServiceAttribution`: an OTLP exporter, a test's in-memory one).

    Until then a started span is a `NonRecordingSpan` with the ids, sampling flag and trace
    state the SDK would have given it: it continues its parent's trace, or starts one, so
    `traceparent` headers and log lines are what they would be with export on. Once a
    processor is added, every span (of tracers handed out before as well) is recorded.
    """

    exporting = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        if not isinstance(span_processor, ServiceAttribution):
            self.exporting = True

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _QuietTracer(super().get_tracer(*args, **kwargs), self)


class _QuietTracer(trace.Tracer):
    """The SDK's tracer while its provider exports, span ids only while it does not."""

    def __init__(self, recording: trace.Tracer, provider: QuietTracerProvider) -> None:
        self._recording = recording
        self._provider = provider

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        *args: Any,
        **kwargs: Any,
    ) -> Span:
        """The SDK's span while the provider exports (the start time and exception options
        in `args`/`kwargs` are its), else the ids alone."""
        if self._provider.exporting:
            return self._recording.start_span(
                name, context, kind, attributes, links, *args, **kwargs
            )
        return NonRecordingSpan(self._span_context(name, context, kind, attributes, links))

    def _span_context(
        self,
        name: str,
        context: Context | None,
        kind: SpanKind,
        attributes: Attributes,
        links: Sequence[Link] | None,
    ) -> SpanContext:
        """The ids the SDK would give the span: its parent's trace (or a new one), a new
        span id, the sampler's decision as the flag."""
        provider = self._provider
        parent = trace.get_current_span(context).get_span_context()
        ids = provider.id_generator
        trace_id = parent.trace_id if parent.is_valid else ids.generate_trace_id()
        sampled = provider.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        kept = sampled.decision is Decision.RECORD_AND_SAMPLE
        flags = TraceFlags.SAMPLED if kept else TraceFlags.DEFAULT
        random = parent.trace_flags.random_trace_id if parent.is_valid else ids.is_trace_id_random()
        if random:
            flags |= TraceFlags.RANDOM_TRACE_ID
        return SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampled.trace_state,
        )

    @_agnosticcontextmanager  # what the API's abstract method is, so `with` and decorators work
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


def configure_tracing(service: str) -> TracerProvider:
    """Install this process's tracer provider (once); OTLP export only when configured."""
    set_process_service(service)
    installed = trace.get_tracer_provider()
    if isinstance(installed, TracerProvider):
        return installed
    provider = QuietTracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(ServiceAttribution())
    if _otlp("TRACES"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("event=otlp_traces_enabled service=%s", service)
    trace.set_tracer_provider(provider)
    return provider


_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_DISTANCE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# The SDK's default buckets (0-10000) suit milliseconds; ours are seconds and distances.
_VIEWS = [
    View(
        instrument_name=name,
        aggregation=ExplicitBucketHistogramAggregation(boundaries=_SECONDS),
    )
    for name in ("imagegen_queue_wait_seconds", "imagegen_generation_seconds")
] + [
    View(
        instrument_name="imagegen_consistency_distance",
        aggregation=ExplicitBucketHistogramAggregation(boundaries=_DISTANCE),
    )
]


def configure_metrics(service: str, registry: CollectorRegistry = REGISTRY) -> MeterProvider:
    """Install this process's meter provider (once): Prometheus always, OTLP when configured."""
    installed = metrics.get_meter_provider()
    if isinstance(installed, MeterProvider):
        return installed
    readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
    if _otlp("METRICS"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        log.info("event=otlp_metrics_enabled service=%s", service)
    provider = MeterProvider(
        resource=Resource.create({"service.name": service}), metric_readers=readers, views=_VIEWS
    )
    metrics.set_meter_provider(provider)
    return provider


def configure_telemetry(service: str, level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Logs, traces and metrics for one service process: what every `__main__` calls."""
    configure_logging(service, level, fmt)
    configure_tracing(service)
    configure_metrics(service)


def metrics_exposition(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The Prometheus text exposition of every metric of this process."""
    return generate_latest(registry)


_kept_tracer: list[trace.Tracer] = []


def tracer() -> trace.Tracer:
    """The process's tracer, kept once the SDK provider is installed: the API builds a new
    one on every call (an instrumentation scope and a lookup each), which every span paid.
    Before the provider is installed the API's proxy is returned and not kept."""
    if _kept_tracer:
        return _kept_tracer[0]
    found = trace.get_tracer(_TRACER_NAME)
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        _kept_tracer.append(found)
    return found


def inject_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's `traceparent` to message headers, unless they carry one.

    A `traceparent` already there was put by someone who knows whose trace the message
    belongs to (an outbox row staged in its request's span, a re-driven dead letter).
    """
    if "traceparent" not in headers:
        propagate.inject(headers)
    return headers


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def same_trace(traceparent: str, other: str) -> bool:
    """True when two `traceparent` values name the same trace."""
    return traceparent.split("-")[1:2] == other.split("-")[1:2]


def tier_of(topic: str) -> str | None:
    """The tier of a `<ns>.jobs.<tier>.v1` topic, None for other topics."""
    match = _JOBS_TOPIC.search(topic)
    return match.group(1) if match else None


def enqueued_at(headers: Mapping[str, str], timestamp: float | None) -> float | None:
    """When the message was put on its way: our header first, else the broker's timestamp."""
    raw = headers.get(ENQUEUED_AT_HEADER)
    if raw:
        try:
            return float(raw)
        except ValueError:
            pass
    return timestamp


def _record_queue_wait(topic: str, since: float, now_ns: int) -> float:
    """A span from enqueue to consume (child of the producer's span), and the histogram."""
    start_ns = min(int(since * 1e9), now_ns)
    waited = (now_ns - start_ns) / 1e9
    tracer().start_span(
        f"{topic} wait", start_time=start_ns, attributes={"messaging.destination.name": topic}
    ).end(end_time=now_ns)
    tier = tier_of(topic)
    attributes = {"topic": topic, **({"tier": tier} if tier else {})}
    instruments().queue_wait.record(waited, attributes)
    return waited


@contextmanager
def consume_span(
    name: str,
    headers: Mapping[str, str],
    *,
    topic: str | None = None,
    enqueued: float | None = None,
    **attributes: str | int | float,
) -> Iterator[Span]:
    """A consumer span that continues the trace carried in `headers`.

    With `enqueued` (epoch seconds) a `<topic> wait` span covers the time on the topic.
    """
    token = otel_context.attach(propagate.extract(dict(headers)))
    try:
        if enqueued is not None and topic is not None:
            waited = _record_queue_wait(topic, enqueued, time.time_ns())
            attributes["messaging.queue_wait_ms"] = round(waited * 1000, 3)
        with tracer().start_as_current_span(
            name, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        otel_context.detach(token)


def metrics_response() -> tuple[bytes, str]:
    """Body and content type for a `/metrics` endpoint."""
    return metrics_exposition(), METRICS_CONTENT_TYPE
