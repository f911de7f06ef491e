"""The faust app: one agent on the events topic, the journal table and its views."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import faust
from mode import CrashingSupervisor

from imagegen.kafka.membership import instance_id
from imagegen.telemetry import consume_span
from schemas.topics import registry
from services.analytics.changelogs import app_id
from services.analytics.journal import position, record, replay
from services.analytics.memory import MemoryStore
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
        self.journal = app.Table("journal", default=None, partitions=partitions)
        self.views = MemoryStore()
        self.replayed = False
        self.skipped = 0
        """Records delivered again after a restart whose counts the journal already held."""

    def rebuild(self) -> None:
        """The views from the whole journal (after recovery: every assigned partition)."""
        views = MemoryStore()
        for entry in list(self.journal.data.values()):
            if entry:
                replay(views, entry)
        self.views = views
        self.replayed = True
        log.info("event=analytics_replayed records=%d", len(self.journal.data))

    def count(self, partition: int, offset: int, raw: bytes | None, ts: float) -> str:
        if not self.replayed:
            self.rebuild()
        key = position(partition, offset)
        if self.journal.get(key) is not None:
            # Counted before a crash or rebalance; its offset was not committed yet.
            self.skipped += 1
            return "journalled"
        outcome, entry = record(self.views, raw, ts)
        self.journal[key] = entry
        replay(self.views, entry)
        return outcome

    def status(self) -> dict[str, int]:
        return {"journal_records": len(self.journal.data), "skipped_journalled": self.skipped}

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
    app = faust.App(
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
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        # Static membership (the pod's or supervised process's name): a restarted process
        # takes its partitions back at once instead of after a rebalance.
        consumer_group_instance_id=instance_id(settings.kafka.instance_id, "analytics"),
        web_enabled=False,
        autodiscover=False,
        table_cleanup_interval=60.0,
        **_faust_config(settings),
    )
    store = Counter(app, partitions)

    @store.journal.on_recover
    async def _recovered() -> None:
        store.rebuild()

    source = app.topic(
        topics.events, key_serializer="raw", value_serializer="raw", partitions=partitions
    )

    # A crash in the agent stops the app (and the process: the supervisor or Kubernetes
    # restarts it from the committed offsets) rather than faust restarting the agent
    # past the event that broke it, which would lose that event's counts.
    @app.agent(source, name="count-events", supervisor_strategy=CrashingSupervisor)
    async def count_events(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            # The event's trace (its producer's traceparent header) goes on here.
            with consume_span("analytics count", _headers(event.message.headers)) as span:
                message = event.message
                outcome = store.count(
                    message.partition, message.offset, event.value, message.timestamp
                )
                span.set_attribute("imagegen.analytics.outcome", outcome)

    return app, store


def _headers(raw: Any) -> dict[str, str]:
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {
        str(k): v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in items
    }
