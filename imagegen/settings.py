"""Settings shared by every service, read from `IMAGEGEN_*` environment variables."""

from __future__ import annotations

from typing import Literal

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

    @model_validator(mode="after")
    def _no_dev_secrets_in_prod(self) -> ServiceSettings:
        if self.env == "prod" and self.s3.secret_key.get_secret_value() == DEV_S3_KEY:
            raise ConfigurationError("IMAGEGEN_S3_SECRET_KEY must be set outside dev")
        return self
