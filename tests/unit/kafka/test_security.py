"""Kafka security settings: validated with the variable to set named, turned into one
librdkafka config, and never shown; the broker's refusals become one clear error."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from pydantic import SecretStr

from imagegen.errors import BrokerAccessError, ConfigurationError, RetryableError
from imagegen.health import broker_check, readiness
from imagegen.kafka.access import ACCESS, AccessWatch
from imagegen.kafka.security import client_config, principal, watched_config
from imagegen.settings import KafkaSettings

PASSWORD = "s3cret-Pa55word-never-shown"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("IMAGEGEN_KAFKA_"):
            monkeypatch.delenv(key)
    ACCESS.reset()
    yield
    ACCESS.reset()


def _sasl(**more: object) -> KafkaSettings:
    return KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_username="imagegen-storage",
        sasl_password=SecretStr(PASSWORD),
        **more,  # type: ignore[arg-type]
    )


def test_plaintext_by_default_and_config_has_no_security_keys() -> None:
    config = client_config(KafkaSettings(bootstrap="b:9092"))
    assert config == {"bootstrap.servers": "b:9092", "security.protocol": "PLAINTEXT"}


def test_sasl_ssl_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = client_config(_sasl(ssl_ca_location=ca))
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "imagegen-storage"
    assert config["sasl.password"] == PASSWORD
    assert config["ssl.ca.location"] == str(ca)
    assert callable(watched_config(_sasl())["error_cb"])


def test_env_variables_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "SECURITY_PROTOCOL": "SSL",
        "SSL_CA_PEM": "ca-text",
        "SSL_CERTIFICATE_PEM": "cert-text",
        "SSL_KEY_PEM": "key-text",
        "SSL_KEY_PASSWORD": PASSWORD,
    }.items():
        monkeypatch.setenv(f"IMAGEGEN_KAFKA_{name}", value)
    config = client_config(KafkaSettings())
    assert config["ssl.key.pem"] == "key-text" and config["ssl.key.password"] == PASSWORD
    assert config["ssl.certificate.pem"] == "cert-text" and config["ssl.ca.pem"] == "ca-text"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "IMAGEGEN_KAFKA_SASL_PASSWORD"),
        ({"security_protocol": "SASL_SSL", "sasl_password": "p"}, "IMAGEGEN_KAFKA_SASL_USERNAME"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": ""},
            "IMAGEGEN_KAFKA_SASL_PASSWORD must be set",
        ),
        ({"sasl_username": "u"}, "IMAGEGEN_KAFKA_SASL_USERNAME is set but"),
        ({"ssl_ca_pem": "x"}, "uses no TLS"),
        (
            {"security_protocol": "SSL", "ssl_certificate_pem": "x"},
            "set IMAGEGEN_KAFKA_SSL_KEY_LOCATION",
        ),
        (
            {"security_protocol": "SSL", "ssl_ca_location": "/nowhere/ca.pem"},
            "IMAGEGEN_KAFKA_SSL_CA_LOCATION: no such file",
        ),
        (
            {"security_protocol": "SSL", "ssl_ca_pem": "x", "ssl_ca_location": __file__},
            "not both",
        ),
        ({"security_protocol": "TLS"}, "security_protocol"),
        ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ],
)
def test_incomplete_settings_name_the_variable(fields: dict[str, str], message: str) -> None:
    with pytest.raises((ConfigurationError, ValueError), match=message):
        KafkaSettings(**fields)  # type: ignore[arg-type]


def test_the_password_is_never_in_a_repr_or_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    settings = _sasl()
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert PASSWORD not in settings.model_dump_json()
    assert PASSWORD not in principal(settings)
    client_config(settings)  # names the principal for the watch
    err = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid credentials")
    with caplog.at_level(logging.DEBUG):
        denied = ACCESS.note(err)
    assert denied is not None and PASSWORD not in str(denied) and PASSWORD not in repr(denied)
    assert caplog.records and all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_a_wrong_password_is_one_clear_retryable_error() -> None:
    client_config(_sasl())
    err = KafkaError(
        KafkaError._AUTHENTICATION,
        "sasl_ssl://127.0.0.1:1/bootstrap: SASL authentication error: Authentication failed"
        " during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
    )
    denied = ACCESS.note(err)
    assert isinstance(denied, BrokerAccessError) and isinstance(denied, RetryableError)
    assert str(denied).startswith(
        "Kafka authentication failed for user imagegen-storage (SASL/SCRAM-SHA-512 over"
        " SASL_SSL): check IMAGEGEN_KAFKA_SASL_USERNAME and IMAGEGEN_KAFKA_SASL_PASSWORD"
    )


@pytest.mark.parametrize(
    ("code", "text", "reason"),
    [
        (
            KafkaError._SSL,
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
            "the broker's certificate is not trusted",
        ),
        (
            KafkaError._TRANSPORT,
            "error:0A000086:SSL routines::certificate verify failed (after 3ms)",
            "the broker's certificate is not trusted",
        ),
        (
            KafkaError._SSL,
            "SSL handshake failed: error:0A000418:SSL routines::tlsv1 alert unknown ca",
            "the broker refused this client's certificate",
        ),
    ],
)
def test_an_untrusted_certificate_names_the_ca_setting(code: int, text: str, reason: str) -> None:
    denied = AccessWatch().note(KafkaError(code, text))
    assert denied is not None
    assert "TLS handshake with the Kafka broker failed" in str(denied)
    assert reason in str(denied) and "IMAGEGEN_KAFKA_SSL_CA_LOCATION" in str(denied)


def test_missing_acls_name_the_topic_and_group() -> None:
    watch = AccessWatch()
    watch.principal = "user imagegen-storage (SASL/SCRAM-SHA-512 over SASL_SSL)"
    topic = watch.note(
        KafkaError(
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            "Subscribed topic not available: ns.events.v1: Broker: Topic authorization failed",
        )
    )
    assert topic is not None
    assert "denied user imagegen-storage" in str(topic)
    assert "access to topic ns.events.v1 (TOPIC_AUTHORIZATION_FAILED)" in str(topic)
    group = watch.note(
        KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Group authorization failed."),
        group="ns.storage",
    )
    assert group is not None and "group ns.storage (GROUP_AUTHORIZATION_FAILED)" in str(group)
    watch.succeeded(topic="ns.events.v1", group="ns.storage")
    assert watch.problem() is None


def test_other_errors_are_not_access_problems() -> None:
    for code in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._MSG_TIMED_OUT):
        assert AccessWatch().note(KafkaError(code, "Connection refused")) is None


def test_error_cb_raises_fatal_errors_for_poll_to_raise() -> None:
    with pytest.raises(Exception, match=r"_FATAL|fenced"):
        AccessWatch().error_cb(KafkaError(KafkaError._FATAL, "fenced", fatal=True))


class _Answers:
    async def ping(self, timeout: float) -> None:
        return None


async def test_readiness_reports_the_refusal_with_its_reason() -> None:
    checks = {"broker": broker_check(_Answers())}
    assert await readiness(checks, 1.0) == (True, {"broker": "ok"})
    client_config(_sasl())
    ACCESS.note(KafkaError(KafkaError._AUTHENTICATION, "invalid credentials"))
    ready, verdicts = await readiness(checks, 1.0)
    assert not ready
    assert verdicts["broker"].startswith("Kafka authentication failed for user imagegen-storage")
