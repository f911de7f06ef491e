"""Tracing and logging set-up shared by every service.

Trace context travels in Kafka headers as W3C `traceparent`; each consumer continues it.
Nothing is exported unless an OTLP endpoint is configured.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind

_TRACER_NAME = "imagegen"


def configure_logging(service: str, level: str = "INFO") -> None:
    """Log lines in key=value form, one per event, to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"ts=%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "aiobotocore", "urllib3", "httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_tracing(service: str) -> TracerProvider:
    """Install a tracer provider for this process (no exporter unless one is added)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


def inject_trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's `traceparent` (if any) to message headers."""
    propagate.inject(headers)
    return headers


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def consume_span(name: str, headers: dict[str, str], **attributes: str | int) -> Iterator[Span]:
    """A consumer span that continues the trace carried in `headers`."""
    parent = propagate.extract(headers)
    token = otel_context.attach(parent)
    try:
        with tracer().start_as_current_span(
            name, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        otel_context.detach(token)
