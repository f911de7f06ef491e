"""Gateway settings, read from `IMAGEGEN_*` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from imagegen.errors import ConfigurationError
from imagegen.settings import DEV_JWT_SECRET, ServiceSettings


class GatewaySettings(ServiceSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    signed_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    stream_token_ttl_s: int = Field(default=300, ge=10, le=3600)
    public_base_url: str = "http://127.0.0.1:8000"
    cors_origins: list[str] = Field(default_factory=list)
    # Longer than the producer's delivery.timeout.ms (30 s): a 503 must mean the broker
    # never got the command, not that it may still arrive after we rolled back.
    publish_timeout_s: float = Field(default=35.0, gt=0)
    sse_ping_s: float = Field(default=15.0, gt=0)
    # Safety net under the wake-ups: a stream re-reads the log at least this often, which
    # also delivers events projected by another replica until LISTEN/NOTIFY is wired in.
    sse_poll_s: float = Field(default=2.0, gt=0)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    consumer_poll_s: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _no_dev_jwt_secret_outside_dev(self) -> GatewaySettings:
        if self.env not in ("dev", "test") and self.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
            raise ConfigurationError("IMAGEGEN_JWT_SECRET must be set outside dev and test")
        if len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ConfigurationError("IMAGEGEN_JWT_SECRET must be at least 32 bytes (RFC 7518)")
        return self
