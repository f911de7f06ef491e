"""A secured Apache Kafka: SASL_SSL (SCRAM-SHA-512) and mTLS listeners, the StandardAuthorizer,
one principal per service holding only the ACLs of `imagegen.kafka.acls`.

- A five-image pack goes through all five services as processes, each its own principal:
  four over SASL_SSL, postprocess over mTLS (its certificate is its identity).
- A wrong password, a broker certificate the client does not trust and a missing topic or
  group ACL each fail with one error naming the cause, readiness answers 503 with it, and
  the consumer loop dead-letters nothing because of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from imagegen.errors import BrokerAccessError
from imagegen.health import HealthServer, broker_check
from imagegen.kafka.access import ACCESS
from imagegen.kafka.acls import service_access
from imagegen.kafka.confluent import KafkaPublisher
from imagegen.kafka.ports import Record
from imagegen.kafka.security import watched_config
from imagegen.kafka.worker import ConsumerLoop
from imagegen.runtime import kafka_consumer, kafka_publisher
from imagegen.settings import KafkaSettings
from imagegen.stack.kafka import delete_topics
from imagegen.stack.ports import LOOPBACK, free_port
from imagegen.stack.services import Supervisor
from imagegen.stack.topics import create_topics
from schemas.topics import TopicNames, registry
from tests.fixtures.secured_kafka import SecuredKafka, secured_kafka
from tests.fixtures.servers import S3Info

pytestmark = pytest.mark.integration

SERVICES = ("storage", "postprocess", "generator", "scheduler", "gateway")
MTLS_SERVICE = "postprocess"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    with secured_kafka(tmp_path_factory.mktemp("secured-kafka")) as kafka:
        yield kafka


@pytest.fixture
def namespace(secured: SecuredKafka) -> Iterator[str]:
    """Topics of a fresh namespace, and each service's principals with only their ACLs:
    `imagegen-<service>` (SCRAM) and `CN=imagegen-<service>` (its client certificate)."""
    ns = f"s{uuid.uuid4().hex[:8]}"
    create_topics(secured.admin_bootstrap, ns)
    for service, access in service_access(ns).items():
        if f"imagegen-{service}" not in secured.passwords:
            secured.add_user(f"imagegen-{service}")
        secured.grant(f"User:imagegen-{service}", access)
        secured.grant(f"User:CN=imagegen-{service}", access)
    ACCESS.reset()
    yield ns
    ACCESS.reset()
    delete_topics(secured.admin_bootstrap, [spec.name for spec in registry(ns)])


def sasl_settings(
    secured: SecuredKafka, namespace: str, service: str, *, password: str | None = None
) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=secured.sasl.address,
        namespace=namespace,
        security_protocol="SASL_SSL",
        sasl_username=f"imagegen-{service}",
        sasl_password=SecretStr(password or secured.passwords[f"imagegen-{service}"]),
        ssl_ca_location=secured.ca.bundle,
    )


def mtls_settings(
    secured: SecuredKafka, namespace: str, service: str, *, trust: Path | None = None
) -> KafkaSettings:
    cert, key = secured.client_certificate(f"imagegen-{service}")
    return KafkaSettings(
        bootstrap=secured.tls.address,
        namespace=namespace,
        security_protocol="SSL",
        ssl_ca_location=trust or secured.ca.bundle,
        ssl_certificate_location=Path(cert),
        ssl_key_location=Path(key),
    )


def kafka_env(settings: KafkaSettings) -> dict[str, str]:
    """The `IMAGEGEN_KAFKA_*` variables a service process reads `settings` from."""
    env = {
        "IMAGEGEN_KAFKA_BOOTSTRAP": settings.bootstrap,
        "IMAGEGEN_KAFKA_NAMESPACE": settings.namespace,
        "IMAGEGEN_KAFKA_SECURITY_PROTOCOL": settings.security_protocol,
    }
    for name in ("sasl_username", "sasl_password", "ssl_ca_location"):
        value = getattr(settings, name)
        if value is not None:
            text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            env[f"IMAGEGEN_KAFKA_{name.upper()}"] = text
    for name in ("ssl_certificate_location", "ssl_key_location"):
        value = getattr(settings, name)
        if value is not None:
            env[f"IMAGEGEN_KAFKA_{name.upper()}"] = str(value)
    return env


async def _readiness(server: HealthServer) -> tuple[int, dict[str, object]]:
    status, _, body = await server.respond("GET", "/readyz")
    return status, json.loads(body)


async def _until_not_ready(server: HealthServer, timeout: float = 20.0) -> str:
    """The broker check's verdict once readiness says 503."""
    deadline = time.monotonic() + timeout
    verdicts: dict[str, object] = {}
    while time.monotonic() < deadline:
        status, body = await _readiness(server)
        verdicts = body["checks"]  # type: ignore[assignment]
        if status == 503 and str(verdicts["broker"]).startswith(("Kafka", "TLS")):
            return str(verdicts["broker"])
        await asyncio.sleep(0.3)
    raise AssertionError(f"readiness never named the refusal: {verdicts}")


# --- the happy path: a pack through five services, each with only its own ACLs ----------


def _wait_http(url: str, supervisor: Supervisor, logs: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        dead = supervisor.dead()
        if dead:
            raise AssertionError(f"{dead} exited:\n{_tails(logs)}")
        try:
            response = httpx.get(url, timeout=3)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready in {timeout}s: {last}\n{_tails(logs)}")


def _tails(logs: Path, lines: int = 25) -> str:
    parts = []
    for path in sorted(logs.glob("*.log")):
        parts.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
    return "\n".join(parts)


@dataclass
class Services:
    envs: dict[str, dict[str, str]]
    gateway: str
    health_ports: dict[str, int]
    jwt_secret: str


def service_envs(
    secured: SecuredKafka,
    namespace: str,
    database_url: str,
    seaweed: S3Info,
    kafka: dict[str, KafkaSettings] | None = None,
    only: tuple[str, ...] = SERVICES,
) -> Services:
    """Each service's environment, as `imagegen up` gives it, but with its own Kafka
    principal: `kafka[name]` when given, else SASL_SSL (mTLS for MTLS_SERVICE)."""
    from services.scheduler.catalogue import DEMO_MODEL, single_backend_catalogue

    jwt_secret = uuid.uuid4().hex * 2
    gateway_port = free_port()
    health_ports = {name: free_port() for name in only if name != "gateway"}
    common = {
        "IMAGEGEN_ENV": "dev",
        "IMAGEGEN_DATABASE_URL": database_url,
        "IMAGEGEN_S3_ENDPOINT": seaweed.endpoint,
        "IMAGEGEN_S3_BUCKET": seaweed.bucket,
        "IMAGEGEN_S3_REGION": seaweed.region,
        "IMAGEGEN_S3_ACCESS_KEY": seaweed.access_key,
        "IMAGEGEN_S3_SECRET_KEY": seaweed.secret_key,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    envs: dict[str, dict[str, str]] = {}
    for name in only:
        settings = (kafka or {}).get(name) or (
            mtls_settings(secured, namespace, name)
            if name == MTLS_SERVICE
            else sasl_settings(secured, namespace, name)
        )
        envs[name] = {**common, **kafka_env(settings)}
        if name in health_ports:
            envs[name]["IMAGEGEN_HEALTH_PORT"] = str(health_ports[name])
    if "generator" in envs:
        envs["generator"].update(
            IMAGEGEN_GENERATOR_BACKEND="demo", IMAGEGEN_GENERATOR_PROVIDERS="demo"
        )
    if "scheduler" in envs:
        catalogue = single_backend_catalogue("demo", DEMO_MODEL).to_json()
        envs["scheduler"]["IMAGEGEN_CATALOGUE"] = catalogue
    gateway = f"http://{LOOPBACK}:{gateway_port}"
    if "gateway" in envs:
        envs["gateway"].update(
            IMAGEGEN_HOST=LOOPBACK,
            IMAGEGEN_PORT=str(gateway_port),
            IMAGEGEN_PUBLIC_BASE_URL=gateway,
            IMAGEGEN_JWT_SECRET=jwt_secret,
        )
    return Services(envs, gateway, health_ports, jwt_secret)


def test_a_pack_goes_through_five_services_each_with_only_its_own_acls(
    secured: SecuredKafka,
    namespace: str,
    database_url: str,
    seaweed: S3Info,
    tmp_path: Path,
) -> None:
    from services.gateway.auth import issue_token

    services = service_envs(secured, namespace, database_url, seaweed)
    gateway, health_ports, jwt_secret = (
        services.gateway,
        services.health_ports,
        services.jwt_secret,
    )
    logs = tmp_path / "logs"
    supervisor = Supervisor(services.envs, logs, tmp_path / "services.json", restart=False)
    supervisor.start()
    try:
        _wait_http(f"{gateway}/readyz", supervisor, logs)
        for port in health_ports.values():
            _wait_http(f"http://{LOOPBACK}:{port}/readyz", supervisor, logs)
        token = issue_token(jwt_secret, "secured-user", "paid", ttl=3600)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=gateway, headers=headers, timeout=30) as client:
            character = client.post(
                "/api/v1/characters",
                json={"name": "Mira", "attributes": {"hairColour": "red"}, "artStyle": "realistic"},
            )
            assert character.status_code == 201, character.text
            accepted = client.post(
                "/api/generate", json={"character_id": character.json()["id"], "image_count": 5}
            )
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            deadline = time.monotonic() + 240
            job: dict[str, object] = {}
            while time.monotonic() < deadline:
                job = client.get(f"/api/generate/{job_id}").raise_for_status().json()
                if job["status"] in ("completed", "partially_completed", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            assert job.get("status") == "completed", f"{job}\n{_tails(logs)}"
            assert len(job["images"]) == 5  # type: ignore[arg-type]
        text = "\n".join(p.read_text() for p in logs.glob("*.log"))
        assert "kafka_access_denied" not in text, _tails(logs)
        for name in SERVICES:  # no password in any service's log
            password = secured.passwords[f"imagegen-{name}"]
            assert password not in text
    finally:
        supervisor.stop()


# --- refusals: one clear error, readiness says it, nothing dead-lettered -----------------


def test_the_services_readiness_names_a_wrong_password_and_an_untrusted_certificate(
    secured: SecuredKafka,
    namespace: str,
    database_url: str,
    seaweed: S3Info,
    tmp_path: Path,
) -> None:
    """The gateway with a wrong password, postprocess trusting another CA: both run, and
    both /readyz answer 503 naming the refusal and the setting to check."""
    wrong = "wrong-" + uuid.uuid4().hex
    kafka = {
        "gateway": sasl_settings(secured, namespace, "gateway", password=wrong),
        "postprocess": mtls_settings(
            secured, namespace, "postprocess", trust=secured.other_ca.bundle
        ),
    }
    services = service_envs(
        secured, namespace, database_url, seaweed, kafka, only=("gateway", "postprocess")
    )
    logs = tmp_path / "logs"
    supervisor = Supervisor(services.envs, logs, tmp_path / "services.json", restart=False)
    supervisor.start()
    expected = {
        services.gateway: (
            "Kafka authentication failed for user imagegen-gateway (SASL/SCRAM-SHA-512"
        ),
        f"http://{LOOPBACK}:{services.health_ports['postprocess']}": (
            "TLS handshake with the Kafka broker failed for the TLS client certificate"
        ),
    }
    try:
        for base, reason in expected.items():
            deadline = time.monotonic() + 120
            last = "no answer"
            while time.monotonic() < deadline:
                assert not supervisor.dead(), _tails(logs)
                try:
                    response = httpx.get(f"{base}/readyz", timeout=5)
                    last = f"{response.status_code} {response.text}"
                    if response.status_code == 503 and reason in response.json()["checks"].get(
                        "broker", ""
                    ):
                        break
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.5)
            else:
                raise AssertionError(f"{base}/readyz never said {reason!r}: {last}\n{_tails(logs)}")
    finally:
        supervisor.stop()
    text = "\n".join(p.read_text() for p in logs.glob("*.log"))
    assert "event=kafka_access_denied" in text
    assert wrong not in text


async def test_a_wrong_password_is_named_and_readiness_says_it(
    secured: SecuredKafka, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-password"
    settings = sasl_settings(secured, namespace, "storage", password=wrong)
    caplog.set_level(logging.DEBUG)
    publisher = KafkaPublisher(
        settings.bootstrap,
        "wrong-password",
        {**watched_config(settings), "delivery.timeout.ms": 4000},
    )
    try:
        server = HealthServer(0, {"broker": broker_check(publisher)})
        verdict = await _until_not_ready(server)
        expected = (
            "Kafka authentication failed for user imagegen-storage (SASL/SCRAM-SHA-512 over"
            " SASL_SSL): check IMAGEGEN_KAFKA_SASL_USERNAME and IMAGEGEN_KAFKA_SASL_PASSWORD"
        )
        assert verdict.startswith(expected), verdict
        # A publish fails with the same error, not a bare delivery timeout.
        with pytest.raises(BrokerAccessError, match="Kafka authentication failed"):
            await publisher.publish(TopicNames(namespace).events, "k", b"{}")
    finally:
        await publisher.close()
    assert any(r.getMessage().startswith("event=kafka_access_denied") for r in caplog.records)
    assert all(wrong not in r.getMessage() for r in caplog.records)
    assert wrong not in repr(settings)


async def test_a_consumer_with_a_wrong_password_names_it_too(
    secured: SecuredKafka, namespace: str
) -> None:
    settings = sasl_settings(secured, namespace, "storage", password="wrong")
    consumer = kafka_consumer(settings, "storage-requests", [settings.topics.requests])
    try:
        deadline = time.monotonic() + 15
        while ACCESS.problem() is None and time.monotonic() < deadline:
            await consumer.poll(0.5)
    finally:
        await consumer.close()
    problem = ACCESS.problem()
    assert problem is not None and "Kafka authentication failed for user imagegen-storage" in str(
        problem
    )


async def test_an_untrusted_broker_certificate_is_named(
    secured: SecuredKafka, namespace: str
) -> None:
    settings = mtls_settings(secured, namespace, "postprocess", trust=secured.other_ca.bundle)
    publisher = kafka_publisher(settings, "postprocess")
    try:
        verdict = await _until_not_ready(HealthServer(0, {"broker": broker_check(publisher)}))
    finally:
        await publisher.close()
    assert verdict.startswith("TLS handshake with the Kafka broker failed for the TLS client")
    assert "the broker's certificate is not trusted by this client" in verdict
    assert "IMAGEGEN_KAFKA_SSL_CA_LOCATION" in verdict


async def test_a_missing_topic_acl_is_named_and_nothing_is_dead_lettered(
    secured: SecuredKafka, namespace: str
) -> None:
    """Storage may read `requests` but not write it: a handler that publishes there is
    refused. The loop retries and says why; the message is neither dead-lettered nor
    committed; readiness says which topic."""
    topics = TopicNames(namespace)
    settings = sasl_settings(secured, namespace, "storage")
    admin_producer = Producer({"bootstrap.servers": secured.admin_bootstrap})
    admin_producer.produce(topics.requests, key=b"user-1", value=b'{"user_id": "user-1"}')
    admin_producer.flush(10)

    publisher = kafka_publisher(settings, "storage")
    attempts: list[Exception] = []

    async def forbidden(record: Record) -> None:
        try:
            await publisher.publish(topics.requests, record.key, record.value)
        except BrokerAccessError as exc:
            attempts.append(exc)
            raise

    loop = ConsumerLoop(
        name="storage-requests",
        consumer=kafka_consumer(settings, "storage-requests", [topics.requests]),
        handlers={topics.requests: forbidden},
        dead_letters=publisher,
        dead_letter_topic=topics.dead_letter,
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    task = asyncio.create_task(loop.run())
    server = HealthServer(0, {"broker": broker_check(publisher)})
    try:
        verdict = await _until_not_ready(server, timeout=40)
        deadline = time.monotonic() + 20
        while len(attempts) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        loop.stop()
        await asyncio.wait_for(task, 30)
        await publisher.close()
    assert verdict.startswith(
        "Kafka denied user imagegen-storage (SASL/SCRAM-SHA-512 over SASL_SSL) access to"
        f" topic {topics.requests} (TOPIC_AUTHORIZATION_FAILED)"
    ), verdict
    assert len(attempts) >= 2, "retried, not given up on"
    assert loop.dead_lettered == 0 and loop.handled == 0
    # Nothing was dead-lettered: the dead-letter topic is empty.
    assert _count(secured, topics.dead_letter) == 0


async def test_a_missing_group_acl_is_named(secured: SecuredKafka, namespace: str) -> None:
    settings = sasl_settings(secured, namespace, "storage")
    consumer = kafka_consumer(settings, "not-granted", [settings.topics.requests])
    try:
        deadline = time.monotonic() + 20
        while ACCESS.problem() is None and time.monotonic() < deadline:
            assert await consumer.poll(0.5) is None
    finally:
        await consumer.close()
    problem = ACCESS.problem()
    assert problem is not None
    assert f"access to group {namespace}.not-granted (GROUP_AUTHORIZATION_FAILED)" in str(problem)


def _count(secured: SecuredKafka, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": secured.admin_bootstrap, "group.id": "count"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            total += high - low
        return total
    finally:
        consumer.close()


# --- the operator's tools: dlq and topic creation, with the same settings ----------------


def _dlq_list(monkeypatch: pytest.MonkeyPatch, settings: KafkaSettings) -> int:
    """`imagegen dlq list` in this process with `settings` as IMAGEGEN_KAFKA_* variables."""
    from imagegen import cli

    for name, value in kafka_env(settings).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as ended:
        cli.main(["dlq", "list", "--idle-timeout", "1"])
    return int(ended.value.code or 0)


def test_the_dlq_cli_logs_in_and_names_a_missing_acl(
    secured: SecuredKafka,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from imagegen.kafka.acls import ServiceAccess
    from imagegen.kafka.redrive import DLQ_READER_PREFIX

    dead_letter = TopicNames(namespace).dead_letter
    # An operator who may read the dead letters, with the reader's fresh group ids.
    if "imagegen-operator" not in secured.passwords:
        secured.add_user("imagegen-operator")
    secured.grant(
        "User:imagegen-operator",
        ServiceAccess("operator", (dead_letter,), (dead_letter,), ()),
        group_prefixes=(DLQ_READER_PREFIX,),
    )
    code = _dlq_list(monkeypatch, sasl_settings(secured, namespace, "operator"))
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"0 dead letter(s) in {dead_letter}" in out.out
    # The gateway's user writes dead letters but may not read them (given the reader's
    # groups, so that what is missing is the topic's Read).
    secured.grant(
        "User:imagegen-gateway",
        ServiceAccess("gateway", (), (), ()),
        group_prefixes=(DLQ_READER_PREFIX,),
    )
    ACCESS.reset()
    code = _dlq_list(monkeypatch, sasl_settings(secured, namespace, "gateway"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: Kafka denied user imagegen-gateway"), err
    assert f"topic {dead_letter} (TOPIC_AUTHORIZATION_FAILED)" in err


def test_topic_creation_with_settings_names_a_missing_acl(
    secured: SecuredKafka, namespace: str
) -> None:
    from imagegen.kafka.security import watched_config
    from imagegen.stack import StackError

    settings = sasl_settings(secured, namespace, "storage")
    spec = registry(f"{namespace}x")[0]
    with pytest.raises(StackError) as refused:
        create_topics(settings.bootstrap, specs=[spec], config=watched_config(settings))
    message = str(refused.value)
    assert f"cannot create topic {spec.name}" in message
    assert "Kafka denied user imagegen-storage" in message
    assert "TOPIC_AUTHORIZATION_FAILED" in message
