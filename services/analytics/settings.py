from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from imagegen.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    uses_object_store: ClassVar[bool] = False

    analytics_host: str = Field(default="127.0.0.1", description="Address the HTTP API binds.")
    analytics_port: int = Field(
        default=8010,
        ge=0,
        le=65535,
        description="Port of the JSON API, /metrics, /healthz, /readyz and the page.",
    )
    analytics_budget_usd_daily: float = Field(
        default=500.0, gt=0, description="The daily budget spend is shown against (USD)."
    )
    analytics_retention_s: int = Field(
        default=8 * 24 * 3600,
        ge=7200,
        description="How long what each record added is kept (the journal's retention.ms):"
        " the windows are rebuilt from it at start, so older windows are gone after a"
        " restart, and a redelivered event older than this counts again.",
    )
    analytics_commit_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often counted offsets (and tables) are committed. faust's commit"
        " timer and its livelock check (every 2.5 intervals, one loop turn per assigned"
        " partition) run at rest too; a longer interval only means more records read again"
        " after a crash, which the journal counts once (it keeps each record's position).",
    )
    analytics_batch_s: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="How long events are gathered before they are counted together and"
        " journalled as one changelog message per partition (the KPIs lag by up to this).",
    )
    analytics_batch_records: int = Field(
        default=1000, ge=1, description="The most events counted as one batch."
    )
    analytics_fetch_min_bytes: int = Field(
        default=64 * 1024,
        ge=1,
        description="The broker answers the consumer's fetch once this many bytes of events"
        " are there, or after IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS: fewer, fuller fetches.",
    )
