"""The real servers of the local stack start, serve, keep data, and fail clearly."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from imagegen.stack import StackError
from imagegen.stack.ports import free_port, port_in_use, wait_for_port
from imagegen.stack.postgres import drop_database, ensure_database, find_or_start_postgres
from imagegen.stack.process import find_binary
from imagegen.stack.s3 import ensure_bucket, s3_client
from imagegen.stack.servers import SeaweedFS, Tansu, tansu_s3_env
from imagegen.stack.topics import create_topics
from schemas.topics import TopicNames, registry
from tests.fixtures.servers import S3Info

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, count: int, timeout: float = 20.0) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(int(timeout / 0.5)):
            msg = consumer.poll(0.5)
            value = msg.value() if msg is not None and msg.error() is None else None
            if value is not None:
                values.append(value)
            if len(values) >= count:
                break
    finally:
        consumer.close()
    return values


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, value, key)
    assert producer.flush(10) == 0


def test_s3_put_get_with_fixture_credentials(seaweed: S3Info) -> None:
    client = s3_client(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, seaweed.region)
    client.put_object(Bucket=seaweed.bucket, Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket=seaweed.bucket, Key="a/b.txt")["Body"].read() == b"hello"

    wrong = s3_client(seaweed.endpoint, seaweed.access_key, "not-the-secret", seaweed.region)
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        wrong.get_object(Bucket=seaweed.bucket, Key="a/b.txt")


def test_ensure_bucket_is_idempotent(seaweed: S3Info) -> None:
    args = (seaweed.access_key, seaweed.secret_key, seaweed.region)
    ensure_bucket(seaweed.endpoint, "second-bucket", *args)
    ensure_bucket(seaweed.endpoint, "second-bucket", *args)
    names = [b["Name"] for b in s3_client(seaweed.endpoint, *args).list_buckets()["Buckets"]]
    assert {"second-bucket", seaweed.bucket} <= set(names)


def test_topics_have_registry_partitions_and_round_trip(
    kafka_bootstrap: str, topic_namespace: str
) -> None:
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    for spec in registry(topic_namespace):
        assert spec.name in metadata.topics
        assert len(metadata.topics[spec.name].partitions) == spec.partitions

    topic = TopicNames(topic_namespace).requests
    _produce(kafka_bootstrap, topic, b"user-1", b"payload")
    assert _consume(kafka_bootstrap, topic, 1) == [b"payload"]


def test_create_topics_is_idempotent(kafka_bootstrap: str, topic_namespace: str) -> None:
    assert create_topics(kafka_bootstrap, topic_namespace) == []


async def test_asyncpg_connects_to_fresh_database(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        )
    finally:
        await conn.close()
    assert name.startswith("test_")
    assert tables == 0


async def test_embedded_postgres_when_nothing_listens(tmp_path: Path) -> None:
    dsn_base, server = find_or_start_postgres(tmp_path / "pg", port=free_port())
    assert server is not None, "nothing listens on a fresh free port: embedded must start"
    try:
        url = ensure_database(dsn_base, "test_embedded")
        assert ensure_database(dsn_base, "test_embedded") == url
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "test_embedded"
        finally:
            await conn.close()
        drop_database(dsn_base, "test_embedded")
    finally:
        server.stop()


def test_tansu_on_s3_keeps_topic_and_message_across_kill(seaweed: S3Info, tmp_path: Path) -> None:
    bucket = f"tansu-{uuid.uuid4().hex[:8]}"
    ensure_bucket(seaweed.endpoint, bucket, seaweed.access_key, seaweed.secret_key, seaweed.region)
    env = tansu_s3_env(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, seaweed.region)
    port = free_port()
    topic = "durable.v1"

    broker = Tansu(port, f"s3://{bucket}/", env, log_dir=tmp_path)
    with broker:
        create_topics(broker.bootstrap, specs=[registry("x")[0].model_copy(update={"name": topic})])
        _produce(broker.bootstrap, topic, b"k", b"survives")
        broker.kill()  # as a crash would: no clean shutdown

    with Tansu(port, f"s3://{bucket}/", env, log_dir=tmp_path) as again:
        metadata = AdminClient({"bootstrap.servers": again.bootstrap}).list_topics(timeout=10)
        assert len(metadata.topics[topic].partitions) == registry("x")[0].partitions
        assert _consume(again.bootstrap, topic, 1) == [b"survives"]


def test_taken_port_gives_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_in_use(port)

        with pytest.raises(
            StackError,
            match=rf"port {port} is already in use \(SeaweedFS S3\); "
            r"pass --s3-port",
        ):
            SeaweedFS(tmp_path / "s3", port, "k", "s", log_dir=tmp_path).start()
        with pytest.raises(StackError, match=rf"port {port} is already in use \(Tansu broker\)"):
            Tansu(port, log_dir=tmp_path).start()


def test_wait_for_port_fails_fast_when_process_dies(tmp_path: Path) -> None:
    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    with pytest.raises(StackError, match="exited with code 3"):
        wait_for_port("127.0.0.1", free_port(), timeout=30, proc=proc, name="demo")


def test_missing_binary_is_a_stack_error() -> None:
    with pytest.raises(StackError, match="no-such-binary-xyz binary not found"):
        find_binary("no-such-binary-xyz", "install it")


def test_more_buckets_than_free_gibibytes_all_take_writes(tmp_path: Path) -> None:
    """weed mini sizes its volume count by the disk's free space (one per GiB here), and each
    bucket needs volumes of its own: the 12th bucket on a disk with 11 GiB free refused
    every PUT until the stack set the count itself."""
    free_gib = shutil.disk_usage(tmp_path).free // 2**30
    count = min(int(free_gib) + 3, 60)
    with SeaweedFS(tmp_path / "s3", free_port(), "k", "s", log_dir=tmp_path) as server:
        client = s3_client(server.endpoint, "k", "s", server.region)
        for n in range(count):
            bucket = f"many-{n}"
            ensure_bucket(server.endpoint, bucket, "k", "s", server.region)
            client.put_object(Bucket=bucket, Key="one.txt", Body=b"x")
        assert client.get_object(Bucket=f"many-{count - 1}", Key="one.txt")["Body"].read() == b"x"
