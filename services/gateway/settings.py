"""Gateway settings, read from `IMAGEGEN_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from imagegen.errors import ConfigurationError
from imagegen.retention import REPLAY_WINDOW
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
    # Heartbeat: an SSE comment this often keeps proxies from closing idle streams.
    sse_ping_s: float = Field(default=15.0, gt=0)
    # Safety net under LISTEN/NOTIFY: a stream re-reads the log at least this often, so a
    # lost listening connection delays events by this much at worst.
    sse_poll_s: float = Field(default=2.0, gt=0)
    # A cancelled job's stream waits this long for its closing pack_completed (and the
    # outcomes of images that were running) before it ends.
    sse_cancel_grace_s: float = Field(default=10.0, ge=0)
    event_log_retention_s: int = Field(
        default=int(REPLAY_WINDOW.total_seconds()),
        description="How long the event log behind the SSE streams (and their resume) keeps"
        " an event. Older ones are pruned hourly; a stream of a job that old still ends"
        " (its status says it is over), and jobs, images and webhook deliveries are kept."
        " The log also recognises redelivered events, so it is refused shorter than the"
        " replay window (51 days, imagegen/retention.py).",
    )
    # Browsers reconnect a dropped EventSource after this many milliseconds.
    sse_retry_ms: int = Field(default=1000, ge=100, le=60_000)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    consumer_poll_s: float | None = Field(
        default=None,
        gt=0,
        description="The events consumer's poll timeout; unset: IMAGEGEN_KAFKA_POLL_TIMEOUT_MS,"
        " as every other service's consumer loop.",
    )

    # --- auth: HS256 with jwt_secret always; RS256/ES256 via a JWKS URL when set.
    jwks_url: str | None = None
    jwt_jwks_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwks_cache_s: float = Field(default=300.0, gt=0)
    # --- rate limits: requests per window per user, by tier then bucket ("api" counts
    # every authenticated call; "generate" only calls that queue work).
    rate_limit_window_s: int = Field(default=60, ge=1, le=3600)
    rate_limits: dict[str, dict[str, int]] = Field(
        default_factory=lambda: {
            "paid": {"api": 1200, "generate": 120},
            "free": {"api": 300, "generate": 20},
        }
    )
    # --- idempotency: keys live this long; a claim left pending this long (a replica
    # died mid-request) may be taken over.
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    idempotency_pending_s: float = Field(default=60.0, gt=0)
    # --- offers: the scheduler's catalogue (the same IMAGEGEN_CATALOGUE JSON), so a request
    # no provider can serve is refused with a 422 before it is queued (offers.py).
    catalogue: str | None = Field(default=None, description="JSON price catalogue.")
    # --- moderation: the built-in list always; OpenAI's endpoint too when a key is set.
    moderation_extra_terms: list[str] = Field(default_factory=list)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    moderation_model: str = "omni-moderation-latest"
    moderation_timeout_s: float = Field(default=10.0, gt=0)
    # --- CDN: cdnUrl is IMAGEGEN_S3_CDN_BASE_URL + key, signed (CloudFront canned policy)
    # when a key pair is set; see services/gateway/cdn.py.
    cloudfront_key_pair_id: str | None = None
    cloudfront_private_key: SecretStr | None = Field(
        default=None, description="PEM RSA private key of the CloudFront key pair (a secret)."
    )
    cdn_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # --- reference photos
    reference_max_photos: int = Field(default=8, ge=1, le=8)
    reference_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    reference_max_pixels: int = Field(default=40_000_000, ge=10_000)
    reference_require_face: bool = True
    # --- the image-safety check of uploaded photos (imagegen/safety.py); without its model
    # (scripts/fetch_safety_model.sh) uploads are refused with a 503 while it is on.
    safety_check: bool = True
    safety_model_dir: Path | None = None
    safety_threshold: float = Field(default=0.8, ge=0.0, le=1.0)
    safety_threshold_children: float = Field(default=0.4, ge=0.0, le=1.0)
    # --- characters' LoRA files (uploaded, or fetched once from an https URL)
    lora_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    lora_fetch_timeout_s: float = Field(default=60.0, gt=0)
    # --- webhooks (see services/gateway/webhooks): http only to these hosts, which also
    # skip the production refusal of private addresses; the default signing secret.
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    # Attempt n+1 waits backoff * 2^(n-1), capped: 2, 4, 8, 16, 30 min -> 6 tries in ~1 h.
    webhook_backoff_s: float = Field(default=120.0, gt=0)
    webhook_backoff_max_s: float = Field(default=1800.0, gt=0)
    webhook_concurrency: int = Field(default=8, ge=1, le=256)
    webhook_poll_s: float = Field(default=1.0, gt=0)
    webhook_ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of the CAs https webhook receivers' certificates must chain"
        " to, instead of the bundled public ones (receivers behind a private CA).",
    )

    @field_validator("webhook_ca_bundle")
    @classmethod
    def _ca_bundle_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"IMAGEGEN_WEBHOOK_CA_BUNDLE={value} is not a readable file")
        return value

    @field_validator("event_log_retention_s")
    @classmethod
    def _event_log_covers_replays(cls, value: int) -> int:
        floor = int(REPLAY_WINDOW.total_seconds())
        if value < floor:
            raise ValueError(
                f"IMAGEGEN_EVENT_LOG_RETENTION_S={value} is shorter than the replay window"
                f" ({floor} s): a redelivered event older than the log would be shown and"
                " projected again"
            )
        return value

    @model_validator(mode="after")
    def _cloudfront_pair(self) -> GatewaySettings:
        if (self.cloudfront_key_pair_id is None) != (self.cloudfront_private_key is None):
            raise ConfigurationError(
                "set both IMAGEGEN_CLOUDFRONT_KEY_PAIR_ID and IMAGEGEN_CLOUDFRONT_PRIVATE_KEY"
            )
        if self.cloudfront_key_pair_id is not None and not self.s3.cdn_base_url:
            raise ConfigurationError(
                "IMAGEGEN_CLOUDFRONT_KEY_PAIR_ID is set but IMAGEGEN_S3_CDN_BASE_URL is not"
            )
        return self

    @model_validator(mode="after")
    def _no_dev_jwt_secret_outside_dev(self) -> GatewaySettings:
        if self.env not in ("dev", "test") and self.jwt_secret.get_secret_value() == DEV_JWT_SECRET:
            raise ConfigurationError("IMAGEGEN_JWT_SECRET must be set outside dev and test")
        if len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ConfigurationError("IMAGEGEN_JWT_SECRET must be at least 32 bytes (RFC 7518)")
        return self
