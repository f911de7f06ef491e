"""Settings shared by every service, read from `IMAGEGEN_*` environment variables."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen.errors import ConfigurationError
from schemas.topics import DEFAULT_NAMESPACE, TopicNames

DEV_JWT_SECRET = "dev-only-insecure-secret-change-me"  # noqa: S105 - refused outside dev
DEV_S3_KEY = "imagegen-dev"


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"
    namespace: str = DEFAULT_NAMESPACE
    session_timeout_ms: int = 6000
    client_id: str = "imagegen"
    commit_interval_ms: int = Field(
        default=1000,
        ge=0,
        description=(
            "Handled records' offsets are committed this often (and on rebalance and"
            " shutdown) rather than one synchronous commit per record; a crash redelivers"
            " at most this much handled work, which handlers absorb (they are idempotent)."
            " 0: commit each record synchronously."
        ),
    )
    fetch_wait_max_ms: int = Field(
        default=500,
        ge=1,
        description=(
            "How long the broker may hold a fetch that found nothing. Apache Kafka answers"
            " as soon as a message arrives, so this only bounds idle polling there; Tansu"
            " holds a fetch for up to about half the wait even when a message arrives, which"
            " makes it most of each hop's latency (the local stack sets 100 ms: see"
            " bench/broker_hop.py)."
        ),
    )

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.namespace)


class S3Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_S3_", extra="ignore")

    endpoint: str | None = "http://127.0.0.1:8333"
    bucket: str = "imagegen"
    region: str = "us-east-1"
    access_key: SecretStr = SecretStr(DEV_S3_KEY)
    secret_key: SecretStr = SecretStr(DEV_S3_KEY)
    public_endpoint: str | None = Field(
        default=None, description="Endpoint browsers use for signed URLs, when it differs."
    )
    cdn_base_url: str | None = None


class ServiceSettings(BaseSettings):
    """Base for each service's settings."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/imagegen"
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        default="text", description="json: one JSON object per line (production)."
    )
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Workers: serve /healthz, /readyz and /metrics on this port (0: any free).",
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    s3: S3Settings = Field(default_factory=S3Settings)

    uses_object_store: ClassVar[bool] = True
    """False for a service that never touches S3 (the scheduler): it needs no keys."""

    @model_validator(mode="after")
    def _no_dev_secrets_in_prod(self) -> ServiceSettings:
        dev_key = self.s3.secret_key.get_secret_value() == DEV_S3_KEY
        if self.env == "prod" and self.uses_object_store and dev_key:
            raise ConfigurationError("IMAGEGEN_S3_SECRET_KEY must be set outside dev")
        return self
