"""The librdkafka configuration of a secured connection, built once from `KafkaSettings`.

Every client - producer, consumer, admin, the dlq reader - takes its connection keys from
`client_config`, so SASL and TLS are set the same way everywhere. The dict holds the
password: pass it to librdkafka, never to a log line (`principal` names who connects).
"""

from __future__ import annotations

from typing import Any

from imagegen.kafka.access import ACCESS
from imagegen.settings import KafkaSettings


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """`bootstrap.servers` and the security keys of `settings`, ready for any client.

    Also tells the process's access watch who connects, for its error messages."""
    ACCESS.principal = principal(settings)
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap,
        "security.protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_username is not None and settings.sasl_password is not None
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username
        config["sasl.password"] = settings.sasl_password.get_secret_value()
    optional: dict[str, Any] = {
        "ssl.ca.location": settings.ssl_ca_location,
        "ssl.certificate.location": settings.ssl_certificate_location,
        "ssl.key.location": settings.ssl_key_location,
        "ssl.ca.pem": settings.ssl_ca_pem,
        "ssl.certificate.pem": settings.ssl_certificate_pem,
        "ssl.key.pem": settings.ssl_key_pem,
        "ssl.key.password": settings.ssl_key_password,
    }
    for key, value in optional.items():
        if value is None:
            continue
        config[key] = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return config


def watched_config(settings: KafkaSettings) -> dict[str, Any]:
    """`client_config` plus the error callback that reports refusals to the access watch:
    for producers, admin clients and one-shot readers (a fatal error is raised again, for
    `poll()` to raise: see `AccessWatch.error_cb`)."""
    return {**client_config(settings), "error_cb": ACCESS.error_cb}


def consumer_config(settings: KafkaSettings) -> dict[str, Any]:
    """`client_config` plus the error callback of a consumer (which never raises): a
    refused login or handshake reaches a consumer only through it, not through `poll()`."""
    return {**client_config(settings), "error_cb": ACCESS.consumer_error_cb}


def principal(settings: KafkaSettings) -> str:
    """Who the broker will see, for error messages (never a secret)."""
    protocol = settings.security_protocol
    if protocol.startswith("SASL_"):
        return f"user {settings.sasl_username} (SASL/{settings.sasl_mechanism} over {protocol})"
    if protocol == "SSL" and (settings.ssl_certificate_location or settings.ssl_certificate_pem):
        where = settings.ssl_certificate_location or "IMAGEGEN_KAFKA_SSL_CERTIFICATE_PEM"
        return f"the TLS client certificate {where} (SSL)"
    return f"ANONYMOUS ({protocol})"
