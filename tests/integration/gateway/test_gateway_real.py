"""The gateway against real Tansu, PostgreSQL and SeaweedFS: publish, project, sign, stream."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from imagegen.blobstore import S3BlobStore
from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.settings import KafkaSettings, S3Settings
from schemas.requests import REQUEST_ADAPTER, GenerateImages
from services.gateway.app import create_app
from services.gateway.auth import issue_token
from services.gateway.settings import GatewaySettings
from tests.fixtures.servers import S3Info
from tests.unit.gateway import factories as ev

pytestmark = pytest.mark.integration


async def _first_request(bootstrap: str, topic: str) -> GenerateImages:
    consumer = KafkaConsumer(bootstrap, f"probe-{uuid.uuid4().hex[:6]}", [topic])
    try:
        async with asyncio.timeout(30):
            while True:
                record = await consumer.poll(0.5)
                if record is not None:
                    command = REQUEST_ADAPTER.validate_json(record.value)
                    assert isinstance(command, GenerateImages)
                    assert record.key == command.user_id
                    return command
    finally:
        await consumer.close()


async def test_pack_round_trip(
    database_url: str, kafka_bootstrap: str, topic_namespace: str, seaweed: S3Info
) -> None:
    s3 = S3Settings(
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        region=seaweed.region,
        access_key=SecretStr(seaweed.access_key),
        secret_key=SecretStr(seaweed.secret_key),
    )
    settings = GatewaySettings(
        env="test",
        database_url=database_url,
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, namespace=topic_namespace),
        s3=s3,
        sse_poll_s=0.5,
    )
    topics = settings.kafka.topics
    user = f"user-{uuid.uuid4().hex[:6]}"
    auth = {"Authorization": f"Bearer {issue_token(settings.jwt_secret, user, 'paid', 600)}"}
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
    ):
        character = (
            await client.post("/api/v1/characters", json={"name": "Ada"}, headers=auth)
        ).json()
        accepted = await client.post(
            "/api/generate",
            json={"character_id": character["id"], "image_count": 2},
            headers=auth,
        )
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["job_id"]
        command = await _first_request(kafka_bootstrap, topics.requests)
        assert (command.job_id, command.user_id, command.image_count) == (job, user, 2)

        publisher = KafkaPublisher(kafka_bootstrap, "tests")
        try:
            for event in ev.pack(job, user, 2):
                await publisher.publish(topics.events, job, event)
        finally:
            await publisher.close()

        async with asyncio.timeout(30):
            while True:
                body = (await client.get(f"/api/generate/{job}", headers=auth)).json()
                if body["status"] == "completed":
                    break
                await asyncio.sleep(0.2)
        assert (body["completed"], body["total"], body["progress"]) == (2, 2, 1.0)

        # The signed URL reads the object from S3 without credentials.
        key = f"images/{user}/{job}/0/display.png"
        async with S3BlobStore(s3) as blobs:
            await blobs.put(key, b"png-bytes", "image/png")
        url = body["images"][0]["url"]
        assert "X-Amz-Signature" in url
        async with httpx.AsyncClient() as browser:
            assert (await browser.get(url)).content == b"png-bytes"
            assert (
                await browser.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
            ).status_code == 403

        stream = await client.get(f"/api/v1/jobs/{job}/events", headers=auth)
        messages = ev.parse_sse(stream.text)
        assert [m["event"] for m in messages][-1] == "pack_completed"
        assert len(messages) == 7
        resumed = await client.get(
            f"/api/v1/jobs/{job}/events", headers={**auth, "Last-Event-ID": str(messages[3]["id"])}
        )

        # Every stream's first message carries the browser's `retry:` hint; compare the rest.
        def without_retry(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in m.items() if k != "retry"} for m in items]

        assert without_retry(ev.parse_sse(resumed.text)) == without_retry(messages[4:])
