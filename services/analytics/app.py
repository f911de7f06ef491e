"""The faust app: one agent on the events topic, windowed tables, a store over them."""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.tables.wrappers import WindowWrapper
from mode import CrashingSupervisor

from imagegen.telemetry import consume_span
from schemas.topics import registry
from services.analytics.changelogs import app_id
from services.analytics.pipeline import apply
from services.analytics.settings import AnalyticsSettings
from services.analytics.windows import HOUR, MINUTE

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


class FaustStore:
    """`KpiStore` over faust tables (changelogged: they survive a restart)."""

    def __init__(self, app: faust.App, settings: AnalyticsSettings, partitions: int) -> None:
        def table(name: str, default: Any) -> Any:
            return app.Table(name, default=default, partitions=partitions)

        self.ids = table("seen-ids", None)
        self.jobs = table("jobs", None)
        self.totals = table("totals", int)
        self.windows: dict[str, WindowWrapper] = {
            MINUTE.name: table("minute", int).tumbling(
                MINUTE.size_s, expires=settings.analytics_minute_retention_s
            ),
            HOUR.name: table("hour", int).hopping(
                HOUR.size_s, HOUR.step_s, expires=settings.analytics_hour_retention_s
            ),
        }

    def seen(self, event_id: str) -> bool:
        return self.ids.get(event_id) is not None

    def mark_seen(self, event_id: str) -> None:
        self.ids[event_id] = 1

    def job(self, job_id: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.jobs.get(job_id)
        return value

    def put_job(self, job_id: str, state: dict[str, Any]) -> None:
        self.jobs[job_id] = state

    def add(self, key: str, value: int, ts: float) -> None:
        for wrapper in self.windows.values():
            wrapper.relative_to(float(ts))[key] += value
        self.totals[key] += value

    # Readers (the HTTP API): every partition is local (one replica, see README).

    def window_items(self, name: str) -> list[tuple[str, float, int]]:
        rows = []
        for raw_key, value in list(self.windows[name].table.data.items()):
            key, window = raw_key
            rows.append((str(key), float(window[0]), int(value)))
        return rows

    def total_items(self) -> list[tuple[str, int]]:
        return [(str(k), int(v)) for k, v in list(self.totals.data.items())]

    def job_items(self) -> list[tuple[str, dict[str, Any]]]:
        return [(str(k), v) for k, v in list(self.jobs.data.items()) if v]


def events_partitions(settings: AnalyticsSettings) -> int:
    events = settings.kafka.topics.events
    return next(s.partitions for s in registry(settings.kafka.namespace) if s.name == events)


def create_app(settings: AnalyticsSettings) -> tuple[faust.App, FaustStore]:
    topics = settings.kafka.topics
    partitions = events_partitions(settings)
    app = faust.App(
        app_id(settings.kafka.namespace),
        broker=f"kafka://{settings.kafka.bootstrap.replace(',', ';kafka://')}",
        store="memory://",
        processing_guarantee=settings.analytics_processing_guarantee,
        topic_partitions=partitions,
        topic_replication_factor=1,
        broker_commit_interval=settings.analytics_commit_interval_s,
        broker_session_timeout=settings.kafka.session_timeout_ms / 1000,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
        table_cleanup_interval=60.0,
        **_faust_config(settings),
    )
    store = FaustStore(app, settings, partitions)
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
                outcome = apply(store, event.value, event.message.timestamp)
                span.set_attribute("imagegen.analytics.outcome", outcome)

    return app, store


def _headers(raw: Any) -> dict[str, str]:
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return {
        str(k): v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in items
    }
