"""JSON logs with ids from context, the consumer loop's per-message context, header rules."""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from imagegen import logging_setup
from imagegen.kafka.memory import InMemoryBroker
from imagegen.kafka.ports import Record
from imagegen.kafka.worker import ConsumerLoop, ids_of
from imagegen.logging_setup import JsonFormatter, TextFormatter, annotate, log_context
from imagegen.telemetry import (
    configure_logging,
    configure_tracing,
    inject_trace_headers,
    tier_of,
    tracer,
)

log = logging.getLogger("tests.telemetry")


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Log records of `tests.telemetry` and its children, as JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("fallback-service"))
    log.addHandler(handler)  # children (the handler's logger) propagate to it
    log.setLevel(logging.INFO)
    yield out
    log.removeHandler(handler)


def parsed(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_names_service_ids_and_the_current_span(lines: io.StringIO) -> None:
    configure_tracing("tests")
    with (
        log_context(service="scheduler", job_id="job-1"),
        tracer().start_as_current_span("work") as span,
    ):
        annotate(user_id="user-7")
        log.info("event=something count=%d", 3)
    log.warning("outside")

    inside, outside = parsed(lines)
    ctx = span.get_span_context()
    assert inside == {
        "ts": inside["ts"],
        "level": "INFO",
        "service": "scheduler",
        "logger": "tests.telemetry",
        "message": "event=something count=3",
        "job_id": "job-1",
        "user_id": "user-7",
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
    }
    assert str(inside["ts"]).endswith("+00:00")
    # Outside any message: no ids, the process's service.
    assert outside["service"] == "fallback-service"
    assert {"job_id", "user_id", "trace_id"}.isdisjoint(outside)


def test_exceptions_stay_inside_their_json_line(lines: io.StringIO) -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("event=failed")
    [entry] = parsed(lines)
    assert entry["level"] == "ERROR"
    assert "ValueError: bad" in str(entry["exception"])


def test_text_lines_add_context_ids_the_message_does_not_say() -> None:
    formatter = TextFormatter("gateway")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "event=a job_id=%s", ("j1",), None)
    with log_context(job_id="j1", user_id="u1"):
        line = formatter.format(record)
    assert line.count("job_id=j1") == 1
    assert line.endswith("event=a job_id=j1 user_id=u1")
    assert "service=gateway" in line


async def test_the_consumer_loop_logs_each_message_with_its_job_user_and_trace(
    lines: io.StringIO,
) -> None:
    configure_tracing("tests")
    broker = InMemoryBroker()
    handler_log = logging.getLogger("tests.telemetry.handler")
    seen: list[str] = []

    async def handler(record: Record) -> None:
        handler_log.info("event=handled offset=%d", record.offset)
        seen.append(record.topic)
        if len(seen) == 2:
            loop.stop()

    loop = ConsumerLoop(
        name="postprocess",
        consumer=broker.consumer("g", ["t"]),
        handlers={"t": handler},
        dead_letters=broker.publisher(),
        dead_letter_topic="dlq",
        poll_timeout=0.05,
    )
    publisher = broker.publisher()
    with tracer().start_as_current_span("producer") as producer:
        await publisher.publish("t", "k", b'{"image": {"job_id": "j9", "user_id": "u9"}}')
    await publisher.publish("t", "k", b'{"job_id": "j2", "user_id": "u2", "image": {}}')
    await loop.run()

    first, second = [e for e in parsed(lines) if e["logger"] == "tests.telemetry.handler"]
    assert (first["service"], first["job_id"], first["user_id"]) == ("postprocess", "j9", "u9")
    assert first["trace_id"] == format(producer.get_span_context().trace_id, "032x")
    assert (second["job_id"], second["user_id"]) == ("j2", "u2")
    assert second["trace_id"] != first["trace_id"]  # no traceparent: a trace of its own


def test_ids_of_tolerates_anything() -> None:
    assert ids_of(b"not json") == (None, None)
    assert ids_of(b"[1, 2]") == (None, None)
    assert ids_of(b'{"job_id": 5}') == (None, None)
    assert ids_of(b'{"user_id": "u"}') == (None, "u")


def test_an_explicit_traceparent_is_kept_and_a_missing_one_added() -> None:
    configure_tracing("tests")
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracer().start_as_current_span("current") as span:
        assert inject_trace_headers({"traceparent": given})["traceparent"] == given
        added = inject_trace_headers({})["traceparent"]
    assert format(span.get_span_context().trace_id, "032x") in added


def test_tier_of_topic() -> None:
    assert tier_of("imagegen.jobs.realtime.v1") == "realtime"
    assert tier_of("imagegen.images.raw.v1") is None


def test_imagegen_log_format_json_makes_every_stderr_line_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagegen.settings import ServiceSettings

    monkeypatch.setenv("IMAGEGEN_LOG_FORMAT", "json")
    monkeypatch.setattr(logging_setup, "_process_service", [])  # restored afterwards
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        configure_logging("storage", "INFO", ServiceSettings().log_format)
        with log_context(job_id="j3"):
            logging.getLogger("services.storage.handlers").info("event=stored index=%d", 2)
    finally:
        root.handlers[:], root.level = saved, level
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["service"] == "storage"
    assert entry["job_id"] == "j3"
    assert entry["message"] == "event=stored index=2"


_EMIT = """
from imagegen.telemetry import configure_telemetry, tracer
from imagegen.metrics import instruments
configure_telemetry("otlp-test")
with tracer().start_as_current_span("x"):
    pass
instruments().jobs.add(1)
"""


@pytest.mark.parametrize("configured", [True, False])
def test_otlp_export_only_when_an_endpoint_is_configured(configured: bool) -> None:
    """In a child process: the providers are process-wide, installed once."""
    paths: list[str] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            paths.append(self.path)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if configured:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
    try:
        subprocess.run([sys.executable, "-c", _EMIT], env=env, check=True, timeout=60)
    finally:
        server.shutdown()
    assert sorted(set(paths)) == (["/v1/metrics", "/v1/traces"] if configured else [])


def test_the_tracer_is_kept_once_the_provider_is_installed() -> None:
    """A fresh process: before the provider, the API's proxy (not kept); after it, one tracer
    whose spans reach a processor added to the provider afterwards."""
    script = """
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from imagegen.telemetry import configure_tracing, tracer
early = tracer()
provider = configure_tracing("probe")
first, second = tracer(), tracer()
assert early is not first and first is second, (early, first, second)
exporter = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(exporter))
with first.start_as_current_span("kept"):
    pass
with early.start_as_current_span("proxied"):
    pass
print(sorted(s.name for s in exporter.get_finished_spans()))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['kept', 'proxied']"
