"""The faust app: one agent on the events topic, the journal table and its views."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faust
from mode import CrashingSupervisor
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from imagegen.kafka.membership import instance_id
from imagegen.telemetry import tracer
from schemas.topics import registry
from services.analytics.changelogs import app_id
from services.analytics.fetching import FetchingApp
from services.analytics.journal import Entry, Journal
from services.analytics.memory import MemoryStore
from services.analytics.monitor import QuietMonitor
from services.analytics.settings import AnalyticsSettings

log = logging.getLogger(__name__)


def _faust_config(settings: AnalyticsSettings) -> dict[str, Any]:
    """The Kafka connection of the shared settings, in faust's words."""
    kafka = settings.kafka
    config: dict[str, Any] = {}
    if kafka.security_protocol != "PLAINTEXT":
        import ssl

        context = None
        if kafka.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(
                cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None,
                cadata=kafka.ssl_ca_pem,
            )
            if kafka.ssl_certificate_location and kafka.ssl_key_location:
                context.load_cert_chain(
                    str(kafka.ssl_certificate_location), str(kafka.ssl_key_location)
                )
        if kafka.security_protocol.startswith("SASL_"):
            password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
            config["broker_credentials"] = faust.SASLCredentials(
                username=kafka.sasl_username or "",
                password=password,
                mechanism=kafka.sasl_mechanism,
                ssl_context=context,
            )
        elif context is not None:
            config["broker_credentials"] = faust.SSLCredentials(context)
    return config


class Counter:
    """The journal table (changelogged) and the views rebuilt from it (in memory)."""

    def __init__(self, app: faust.App, partitions: int) -> None:
        self.table = app.Table("journal", default=None, partitions=partitions)
        self.journal = Journal(lambda: self.table.data, self._send)

    def _send(self, partition: int, key: str, message: Entry) -> None:
        # The table's own write path minus its current-event lookup: a batch's message
        # goes to its records' partition, whichever event faust holds as current.
        self.table.send_changelog(partition, key, message)

    @property
    def views(self) -> MemoryStore:
        return self.journal.views

    def status(self) -> dict[str, int]:
        return self.journal.status()

    # Readers (the HTTP API): every partition is local (one replica, see README).

    def window_items(self, name: str) -> list[tuple[str, float, int]]:
        return self.views.window_items(name)

    def total_items(self) -> list[tuple[str, int]]:
        return self.views.total_items()

    def job_items(self) -> list[tuple[str, dict[str, Any]]]:
        return self.views.job_items()


def events_partitions(settings: AnalyticsSettings) -> int:
    events = settings.kafka.topics.events
    return next(s.partitions for s in registry(settings.kafka.namespace) if s.name == events)


def create_app(settings: AnalyticsSettings) -> tuple[faust.App, Counter]:
    topics = settings.kafka.topics
    partitions = events_partitions(settings)
    app = FetchingApp(
        app_id(settings.kafka.namespace),
        broker=f"kafka://{settings.kafka.bootstrap.replace(',', ';kafka://')}",
        store="memory://",
        # faust keeps a folder even with in-memory tables; by default `<app id>-data` in the
        # working directory, which is the repository locally and read-only in the pod.
        datadir=str(Path(tempfile.gettempdir()) / f"{app_id(settings.kafka.namespace)}-data"),
        # The journal makes each record's count atomic; at_least_once commits offsets only
        # after the journal's changelog is flushed (see services/analytics/journal.py).
        processing_guarantee="at_least_once",
        topic_partitions=partitions,
        topic_replication_factor=1,
        broker_commit_interval=settings.analytics_commit_interval_s,
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        # As every consumer's (a third of the session unless set): each heartbeat wakes the
        # process, at rest too.
        broker_heartbeat_interval=settings.kafka.heartbeat_ms() / 1000,
        consumer_auto_offset_reset="earliest",
        # Static membership (the pod's or supervised process's name): a restarted process
        # takes its partitions back at once instead of after a rebalance.
        consumer_group_instance_id=instance_id(settings.kafka.instance_id, "analytics"),
        web_enabled=False,
        autodiscover=False,
        table_cleanup_interval=60.0,
        monitor=QuietMonitor(),
        **_faust_config(settings),
    )
    app.fetch_min_bytes = settings.analytics_fetch_min_bytes
    app.fetch_max_wait_ms = settings.kafka.fetch_wait_max_ms
    store = Counter(app, partitions)

    @store.table.on_recover
    async def _recovered() -> None:
        store.journal.rebuild()

    source = app.topic(
        topics.events, key_serializer="raw", value_serializer="raw", partitions=partitions
    )

    # A crash in the agent stops the app (and the process: the supervisor or Kubernetes
    # restarts it from the committed offsets) rather than faust restarting the agent
    # past the event that broke it, which would lose that event's counts.
    @app.agent(source, name="count-events", supervisor_strategy=CrashingSupervisor)
    async def count_events(stream: faust.StreamT[bytes]) -> None:
        # Records come in batches (what arrived within `analytics_batch_s`, 1 s): one journal
        # message per partition per batch instead of one per record. take_events acks a
        # batch's records only after this body, and faust flushes the changelog producer
        # before it commits their offsets.
        assert isinstance(stream, faust.Stream)  # take_events is not on StreamT
        batches = stream.take_events(settings.analytics_batch_records, settings.analytics_batch_s)
        async for events in batches:
            with batch_span(events) as span:
                outcomes: dict[str, int] = {}
                try:
                    for event in events:
                        message = event.message
                        outcome = store.journal.count(
                            message.partition, message.offset, event.value, message.timestamp
                        )
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                finally:
                    store.journal.flush()
                    for outcome, n in outcomes.items():
                        span.set_attribute(f"imagegen.analytics.{outcome}", n)

    return app, store


@contextmanager
def batch_span(events: Sequence[faust.EventT[bytes]]) -> Iterator[Span]:
    """One consumer span per batch, linked to each event's trace (its producer's
    traceparent header), as OpenTelemetry's messaging conventions do for batches: a span
    per event cost more CPU than counting the event."""
    links = []
    for event in events:
        context = trace.get_current_span(
            propagate.extract(_headers(event.message.headers))
        ).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
    with tracer().start_as_current_span(
        "analytics count",
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={"messaging.batch.message_count": len(events)},
    ) as span:
        yield span


def _headers(raw: Any) -> dict[str, str]:
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {
        str(k): v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in items
    }
