"""Settings shared by every service, read from `IMAGEGEN_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegen.errors import ConfigurationError
from schemas.topics import DEFAULT_NAMESPACE, TopicNames

DEV_JWT_SECRET = "dev-only-insecure-secret-change-me"  # noqa: S105 - refused outside dev
DEV_S3_KEY = "imagegen-dev"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_KAFKA_", extra="ignore")

    bootstrap: str = "127.0.0.1:9092"
    namespace: str = DEFAULT_NAMESPACE
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int | None = Field(
        default=None,
        gt=0,
        description=(
            "How often a consumer heartbeats to its group coordinator; unset: a third of the"
            " session timeout, as Kafka's clients default. A heartbeat is also how a member"
            " learns of a rebalance, so this bounds how long a join waits for the others;"
            " the session is how long the coordinator can be away before the member gives"
            " up on it (librdkafka then rejoins as a new member, and a static member's next"
            " offset commit is fenced: its process restarts)."
        ),
    )
    client_id: str = "imagegen"
    commit_interval_ms: int = Field(
        default=5000,
        ge=0,
        description=(
            "Handled records' offsets are committed this often (and on rebalance and"
            " shutdown) rather than one synchronous commit per record; a crash redelivers"
            " at most this much handled work, which handlers absorb (they are idempotent)."
            " 0: commit each record synchronously. 5 s is the Kafka clients' own default:"
            " at a trickle every consumer that handled a record commits once per interval,"
            " and each commit is a write to __consumer_offsets; at 1 image/s, 1 s cost the"
            " local broker ~15 ms of CPU per image more than 5 s (bench/broker_cpu.py)."
        ),
    )
    instance_id: str = Field(
        default="",
        description=(
            "This process's stable name for static group membership (Kubernetes: the pod"
            " name; the local supervisor: <service>-<n>): each consumer joins as"
            " <instance_id>-<group>[-<suffix>], so a restarted process takes its partitions"
            " back at once instead of after the session timeout and a rebalance. Unique per"
            " live process. Empty: dynamic membership. See imagegen/kafka/membership.py."
        ),
    )
    fetch_wait_max_ms: int = Field(
        default=2000,
        ge=1,
        description=(
            "How long the broker may hold a fetch that found nothing (a long poll). Apache"
            " Kafka answers as soon as a message arrives, so this only bounds idle polling"
            " there: an idle consumer fetches once per wait (500 ms cost the idle broker"
            " about 3x the CPU of 2000 ms with 11 consumers); the price is that a partition"
            " newly assigned while a fetch is held waits for it to return. Tansu holds a"
            " fetch for up to about half the wait even when a message arrives, which makes"
            " it most of each hop's latency (the local stack sets 100 ms on Tansu, see"
            " bench/broker_hop.py, and 5 s on Apache Kafka, where every member is a static"
            " one that takes its partitions back on restart: imagegen/stack/local.py)."
        ),
    )
    poll_timeout_ms: int = Field(
        default=1000,
        ge=10,
        description=(
            "How long a consumer loop's poll waits for a record before it loops again (a"
            " record is handed over as soon as it arrives, so this is no latency): each"
            " empty round costs the process a loop turn at rest (and a thread hand-off"
            " where the poll blocks in a thread, see poll_wakeup). A stop ends the poll in"
            " flight: at once on the event loop, within 2 s where it blocks in a thread."
            " The local stack sets 10 s (imagegen/stack/local.py)."
        ),
    )
    poll_wakeup: bool = Field(
        default=True,
        description=(
            "Consumers wait for records, and producers for delivery reports, on the event"
            " loop, woken by librdkafka through a pipe when something arrives"
            " (imagegen/kafka/wakeup.py), instead of in a thread blocked in a poll (which"
            " confluent-kafka wakes every 200 ms to look for signals) and a thread hand-off"
            " per record. false: the threads (also where this librdkafka build does not"
            " allow the pipe)."
        ),
    )

    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT",
        description="SASL_SSL (SCRAM user and password over TLS) or SSL (mTLS) in production.",
    )
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = Field(
        default=None, description="PEM file of the CA that signed the broker's certificate."
    )
    ssl_certificate_location: Path | None = Field(
        default=None, description="mTLS: PEM file of this client's certificate."
    )
    ssl_key_location: Path | None = Field(
        default=None, description="mTLS: PEM file of this client's private key."
    )
    ssl_key_password: SecretStr | None = None
    ssl_ca_pem: str | None = Field(default=None, description="The CA as PEM text, not a file.")
    ssl_certificate_pem: str | None = None
    ssl_key_pem: SecretStr | None = None

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.namespace)

    @model_validator(mode="after")
    def _heartbeats_within_the_session(self) -> KafkaSettings:
        beat = self.heartbeat_interval_ms
        if beat is not None and beat >= self.session_timeout_ms:
            raise ConfigurationError(
                f"IMAGEGEN_KAFKA_HEARTBEAT_INTERVAL_MS ({beat}) must be below"
                f" IMAGEGEN_KAFKA_SESSION_TIMEOUT_MS ({self.session_timeout_ms}): a member"
                " heartbeats several times a session"
            )
        return self

    def heartbeat_ms(self) -> int:
        """The heartbeat interval consumers use: the one set, else a third of the session."""
        return self.heartbeat_interval_ms or heartbeat_default(self.session_timeout_ms)

    @model_validator(mode="after")
    def _security_complete(self) -> KafkaSettings:
        """Refuse settings that cannot connect, naming the variable to set (not a librdkafka
        error at the first poll, or a client that retries an impossible handshake for ever)."""
        protocol = self.security_protocol
        name = f"IMAGEGEN_KAFKA_SECURITY_PROTOCOL={protocol}"
        sasl = protocol.startswith("SASL_")
        if sasl:
            for field in ("sasl_username", "sasl_password"):
                value = getattr(self, field)
                if value is None or not (
                    value.get_secret_value() if isinstance(value, SecretStr) else value
                ):
                    raise ConfigurationError(f"{_env(field)} must be set with {name}")
        else:
            for field in ("sasl_username", "sasl_password"):
                if getattr(self, field) is not None:
                    raise ConfigurationError(f"{_env(field)} is set but {name} uses no SASL")
        tls = protocol in ("SSL", "SASL_SSL")
        pairs = (
            ("ssl_ca_location", "ssl_ca_pem"),
            ("ssl_certificate_location", "ssl_certificate_pem"),
            ("ssl_key_location", "ssl_key_pem"),
        )
        for location, pem in pairs:
            for field in (location, pem):
                if getattr(self, field) is not None and not tls:
                    raise ConfigurationError(f"{_env(field)} is set but {name} uses no TLS")
            if getattr(self, location) is not None and getattr(self, pem) is not None:
                raise ConfigurationError(f"set {_env(location)} or {_env(pem)}, not both")
            path = getattr(self, location)
            if path is not None and not path.is_file():
                raise ConfigurationError(f"{_env(location)}: no such file {path}")
        has_cert = self.ssl_certificate_location or self.ssl_certificate_pem
        has_key = self.ssl_key_location or self.ssl_key_pem
        if bool(has_cert) != bool(has_key):
            missing = "ssl_key_location" if has_cert else "ssl_certificate_location"
            raise ConfigurationError(f"mTLS needs a certificate and its key: set {_env(missing)}")
        if self.ssl_key_password is not None and not has_key:
            raise ConfigurationError("IMAGEGEN_KAFKA_SSL_KEY_PASSWORD is set but no key is")
        return self


def heartbeat_default(session_timeout_ms: int) -> int:
    """A third of the session, as Kafka's clients default (at least 500 ms)."""
    return max(session_timeout_ms // 3, 500)


def _env(field: str) -> str:
    return f"IMAGEGEN_KAFKA_{field.upper()}"


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
