"""Log set-up shared by every service: key=value text for people, JSON lines for machines.

The ids a log line is about (service, job, user) live in context variables that the
consumer loop sets per message and the gateway per request, so a handler's plain
`log.info("event=x ...")` carries them without passing them around. Trace and span ids
come from the current OpenTelemetry span.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from opentelemetry import trace

LogFormat = Literal["json", "text"]

_NOISY = ("botocore", "aiobotocore", "urllib3", "httpx", "httpcore", "uvicorn.access")


@dataclass
class LogContext:
    """The ids of what is being worked on; mutable so code deeper in a request can add one."""

    service: str | None = None
    job_id: str | None = None
    user_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


_current: ContextVar[LogContext | None] = ContextVar("imagegen_log_context", default=None)
_process_service: list[str] = []  # set once by configure_logging/configure_tracing


def set_process_service(service: str) -> None:
    """The service this process runs (the default when no context names one)."""
    _process_service[:] = [service]


def current_context() -> LogContext | None:
    return _current.get()


def current_service() -> str | None:
    ctx = _current.get()
    if ctx is not None and ctx.service:
        return ctx.service
    return _process_service[0] if _process_service else None


@contextmanager
def log_context(
    *, service: str | None = None, job_id: str | None = None, user_id: str | None = None
) -> Iterator[LogContext]:
    """A fresh context for one message or request; ids not given are inherited."""
    outer = _current.get()
    ctx = LogContext(
        service=service or (outer.service if outer else None),
        job_id=job_id or (outer.job_id if outer else None),
        user_id=user_id or (outer.user_id if outer else None),
    )
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def annotate(*, job_id: str | None = None, user_id: str | None = None) -> None:
    """Add ids to the current message's or request's context (no-op outside one)."""
    ctx = _current.get()
    if ctx is None:
        return
    if job_id:
        ctx.job_id = job_id
    if user_id:
        ctx.user_id = user_id


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, service, logger, message, and the ids known."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = _current.get()
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": (ctx.service if ctx and ctx.service else None) or self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if ctx is not None:
            if ctx.job_id:
                entry["job_id"] = ctx.job_id
            if ctx.user_id:
                entry["user_id"] = ctx.user_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`ts=… level=… service=… logger=… <message>` plus the ids known, for people."""

    def __init__(self, service: str) -> None:
        super().__init__(
            "ts=%(asctime)s level=%(levelname)s service=%(service)s logger=%(name)s"
            " %(message)s%(context_ids)s"
        )
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        ctx = _current.get()
        record.service = (ctx.service if ctx and ctx.service else None) or self._service
        message = record.getMessage()
        # Ids the message does not already say, so a line is never ambiguous.
        ids = ""
        for name in ("job_id", "user_id"):
            value = getattr(ctx, name, None) if ctx is not None else None
            if value and f"{name}=" not in message:
                ids += f" {name}={value}"
        record.context_ids = ids
        return super().format(record)


def configure_logging(service: str, level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send every log line of the process to stderr in `fmt`, at `level`."""
    set_process_service(service)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
