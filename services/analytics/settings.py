from __future__ import annotations

from typing import ClassVar, Literal

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
    analytics_processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        default="exactly_once",
        description="exactly_once: table changes and the consumed offsets are committed in"
        " one Kafka transaction per partition, so a crash never counts an event twice or"
        " loses one (needs a broker with transactions: Apache Kafka). Redelivered copies"
        " of an event (the same id) are counted once either way.",
    )
    analytics_minute_retention_s: int = Field(
        default=26 * 3600,
        ge=3600,
        description="How long per-minute windows are kept (today's spend is their sum).",
    )
    analytics_hour_retention_s: int = Field(
        default=8 * 24 * 3600, ge=7200, description="How long per-hour windows are kept."
    )
    analytics_commit_interval_s: float = Field(
        default=1.0, gt=0, description="How often counted offsets (and tables) are committed."
    )
