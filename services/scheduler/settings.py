"""The scheduler's settings (`IMAGEGEN_*`); the policy they drive is described in `ledger.py`."""

from __future__ import annotations

from decimal import Decimal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from imagegen.errors import ConfigurationError
from imagegen.settings import ServiceSettings
from schemas.requests import UserTier


class SchedulerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")
    uses_object_store = False

    default_steps: int = 20
    default_guidance: float = 7.0
    max_attempts: int = Field(default=3, ge=1, description="Attempts per provider.")
    retry_backoff_s: float = Field(default=2.0, gt=0, description="First retry delay.")
    retry_backoff_max_s: float = Field(default=60.0, gt=0)
    tick_interval_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Retry ticker base period: it sleeps until the next retry is due, and sweeps"
            " overdue attempts and unused slots every 10 periods."
        ),
    )
    relay_interval_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Outbox poll period: a safety net, since every commit that stages a message wakes"
            " the relay at once, and a relay that finds another holding the lock retries"
            " after 50 ms; this only bounds rows a crashed instance left staged. Each poll is"
            " a transaction, idle or not."
        ),
    )
    # Overdue attempts (overdue.py): an attempt that went silent is retried, so a message
    # lost anywhere downstream cannot hold an image (and its job) forever. 0: never.
    attempt_run_deadline_s: float = Field(
        default=900.0,
        ge=0,
        description="Seconds from generation_started to generation_completed.",
    )
    attempt_store_deadline_s: float = Field(
        default=900.0,
        ge=0,
        description="Seconds from generation_completed to image_stored.",
    )

    daily_budget_usd: Decimal = Field(default=Decimal("500"), ge=0)
    user_daily_limit_paid_usd: Decimal = Field(default=Decimal("50"), ge=0)
    user_daily_limit_free_usd: Decimal = Field(default=Decimal("2"), ge=0)
    budget_timezone: str = Field(
        default="UTC", description="Day boundary: an IANA zone name or an offset like +05:30."
    )
    max_jobs_in_flight_paid: int = Field(default=4, ge=1)
    max_jobs_in_flight_free: int = Field(default=1, ge=1)
    story_max_in_flight: int = Field(default=5, ge=1)
    max_variations: int = Field(default=2, ge=0, le=5)
    catalogue: str | None = Field(default=None, description="JSON price catalogue.")
    openai_api_key: SecretStr | None = Field(
        default=None,
        description="IMAGEGEN_OPENAI_API_KEY, as the generator's: when set, dall-e-3 and"
        " gpt-image-1 are offered (added to the catalogue unless it names them).",
    )
    # Provider health (provider_health.py); named IMAGEGEN_SCHEDULER_PROVIDER_* in the
    # environment, 0 turns the breaker off.
    provider_failure_threshold: int = Field(
        default=5,
        ge=0,
        validation_alias=AliasChoices(
            "IMAGEGEN_SCHEDULER_PROVIDER_FAILURE_THRESHOLD", "provider_failure_threshold"
        ),
        description="Retryable failures in a row that take a provider out of the rotation.",
    )
    provider_cooldown_s: float = Field(
        default=60.0,
        ge=0,
        validation_alias=AliasChoices(
            "IMAGEGEN_SCHEDULER_PROVIDER_COOLDOWN_S", "provider_cooldown_s"
        ),
        description="How long a failing provider stays out of the rotation.",
    )
    # --- scene extraction: pages without a scene description are read by an LLM (any
    # OpenAI-compatible endpoint) when a base URL or key is set, else by the extractor.
    scene_llm_base_url: str | None = None
    scene_llm_api_key: SecretStr | None = None
    scene_llm_model: str = "gpt-4o-mini"
    scene_llm_timeout_s: float = Field(default=5.0, gt=0, le=60)
    scene_llm_concurrency: int = Field(default=4, ge=1, le=32)
    scene_llm_budget_s: float = Field(
        default=15.0, gt=0, description="At most this long reading one request's pages."
    )
    scene_llm_cooldown_s: float = Field(
        default=30.0, ge=0, description="After a failure, the extractor alone this long."
    )

    @field_validator("budget_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from services.scheduler.day_totals import parse_timezone

        try:
            parse_timezone(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from exc
        return value

    def user_daily_limit(self, tier: UserTier) -> Decimal:
        return (
            self.user_daily_limit_paid_usd
            if tier is UserTier.PAID
            else self.user_daily_limit_free_usd
        )

    def max_jobs_in_flight(self, tier: UserTier) -> int:
        return (
            self.max_jobs_in_flight_paid if tier is UserTier.PAID else self.max_jobs_in_flight_free
        )
