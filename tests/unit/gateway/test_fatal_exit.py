"""The gateway ends its process (non-zero) when its Kafka client breaks for good."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import KafkaError

from imagegen.blobstore import InMemoryBlobStore
from imagegen.errors import FatalClientError
from imagegen.kafka import Record
from imagegen.kafka.memory import InMemoryBroker
from imagegen.settings import KafkaSettings
from imagegen.stack.ports import free_port
from services.gateway.app import create_app
from services.gateway.auth import issue_token
from tests.unit.gateway.conftest import gateway_settings
from tests.unit.kafka.mock_cluster import MockCluster, mock_cluster

ROOT = Path(__file__).resolve().parents[3]


class FencedConsumer:
    """An events consumer whose client broke for good at its first poll."""

    async def poll(self, timeout: float) -> Record | None:
        raise FatalClientError("kafka: _FATAL: Fatal error: fenced")

    async def commit(self, record: Record) -> None:
        raise AssertionError("nothing was delivered")

    async def close(self) -> None:
        return None


async def test_a_dead_events_consumer_asks_for_the_process_to_end(gateway_db_url: str) -> None:
    heard: list[BaseException] = []
    app = create_app(
        gateway_settings(gateway_db_url),
        publisher=InMemoryBroker().publisher(),
        consumer_factory=lambda group, topics: FencedConsumer(),
        blob_store=InMemoryBlobStore(),
        on_fatal=heard.append,
    )
    async with app.router.lifespan_context(app):
        async with asyncio.timeout(5):
            while not heard:
                await asyncio.sleep(0.01)
        assert [type(e) for e in heard] == [FatalClientError]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        ) as client:
            assert (await client.get("/healthz")).status_code == 503


@pytest.fixture
def cluster() -> Iterator[MockCluster]:
    try:
        with mock_cluster() as found:
            yield found
    except LookupError as exc:
        pytest.skip(f"librdkafka mock cluster unavailable: {exc}")


async def test_a_fatal_producer_error_on_a_request_asks_for_the_process_to_end(
    gateway_db_url: str, cluster: MockCluster
) -> None:
    # The gateway's own producer (not injected) on librdkafka's mock broker.
    settings = gateway_settings(gateway_db_url)
    settings = settings.model_copy(
        update={
            "kafka": KafkaSettings(
                bootstrap=cluster.bootstrap, namespace=f"t{uuid.uuid4().hex[:8]}"
            )
        }
    )
    heard: list[BaseException] = []
    broker = InMemoryBroker()
    app = create_app(
        settings,
        consumer_factory=broker.consumer,
        blob_store=InMemoryBlobStore(),
        on_fatal=heard.append,
    )
    token = issue_token(settings.jwt_secret, "alice", "paid", 600)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        ) as client,
    ):
        character = await client.post("/api/v1/characters", json={"name": "Mia"}, headers=headers)
        assert character.status_code == 201, character.text
        body = {"character_id": character.json()["id"], "image_count": 1}
        accepted = await client.post("/api/generate", json=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert heard == []
        cluster.fail_produce(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)
        refused = await client.post("/api/generate", json=body, headers=headers)
        assert refused.status_code == 503
        assert [type(e) for e in heard] == [FatalClientError]


def test_the_gateway_process_exits_non_zero_when_told_to(tmp_path: Path) -> None:
    # main() as `python -m services.gateway` runs it, with an app that reports a fatal error
    # from another thread (as the producer's poller thread does) once it is serving.
    script = textwrap.dedent(
        """
        import threading
        from contextlib import asynccontextmanager
        from fastapi import FastAPI
        from imagegen.errors import FatalClientError
        from services.gateway import __main__ as gateway_main

        def create_app(settings, on_fatal):
            @asynccontextmanager
            async def lifespan(app):
                error = FatalClientError("kafka: PRODUCER_FENCED: injected")
                threading.Timer(0.3, on_fatal, [error]).start()
                yield
                print("lifespan shut down", flush=True)

            return FastAPI(lifespan=lifespan)

        gateway_main.create_app = create_app
        gateway_main.main()
        print("main returned", flush=True)
        """
    )
    env = {**os.environ, "IMAGEGEN_ENV": "test", "IMAGEGEN_PORT": str(free_port())}
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "lifespan shut down" in done.stdout  # a graceful stop, as on SIGTERM
    assert "main returned" not in done.stdout
    assert "event=gateway_exit" in done.stdout + done.stderr
