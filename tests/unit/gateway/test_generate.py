from __future__ import annotations

import asyncpg
import pytest
from pydantic import BaseModel

from imagegen.errors import RetryableError
from schemas.requests import REQUEST_ADAPTER, GenerateImages, JobKind, UserTier
from tests.unit.gateway.conftest import Gateway, running_gateway


async def test_generate_publishes_one_command_keyed_by_user(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user, seed=7, artStyle="anime")
    response = await gateway.client.post(
        "/api/generate",
        json={"character_id": character["id"], "image_count": 5},
        headers=gateway.auth(user, UserTier.FREE),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["events_url"].endswith(f"/api/v1/jobs/{body['job_id']}/events")

    records = gateway.broker.records(gateway.topics.requests)
    assert len(records) == 1
    assert records[0].key == user
    command = REQUEST_ADAPTER.validate_json(records[0].value)
    assert isinstance(command, GenerateImages)
    assert command.job_id == body["job_id"]
    assert (command.user_id, command.tier, command.kind) == (user, UserTier.FREE, JobKind.PACK)
    assert command.image_count == 5
    assert command.character.id == character["id"]
    assert (command.character.seed, command.character.art_style) == (7, "anime")

    status = await gateway.client.get(f"/api/generate/{body['job_id']}", headers=gateway.auth(user))
    assert status.status_code == 200
    assert status.json()["status"] == "queued"
    assert status.json()["total"] == 5
    assert status.json()["progress"] == 0.0


@pytest.mark.parametrize("count", [0, 24])
async def test_image_count_out_of_range_is_422(gateway: Gateway, user: str, count: int) -> None:
    character = await gateway.create_character(user)
    response = await gateway.client.post(
        "/api/generate",
        json={"character_id": character["id"], "image_count": count},
        headers=gateway.auth(user),
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image_count"]
    assert gateway.broker.records(gateway.topics.requests) == []


async def test_unknown_or_foreign_character_is_404(gateway: Gateway, user: str) -> None:
    foreign = await gateway.create_character("someone-else")
    for character_id in ("no-such-character", foreign["id"]):
        response = await gateway.client.post(
            "/api/generate",
            json={"character_id": character_id, "image_count": 3},
            headers=gateway.auth(user),
        )
        assert response.status_code == 404
        assert "not found" in response.json()["detail"]
    assert gateway.broker.records(gateway.topics.requests) == []


async def test_foreign_job_is_404(gateway: Gateway, user: str) -> None:
    job_id = await gateway.generate(user, 2)
    response = await gateway.client.get(f"/api/generate/{job_id}", headers=gateway.auth("other"))
    assert response.status_code == 404


class _DownPublisher:
    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        raise RetryableError("kafka: _TRANSPORT: broker down")

    async def close(self) -> None:
        return None


async def test_publish_failure_is_503_and_writes_nothing(gateway_db_url: str, user: str) -> None:
    async with running_gateway(gateway_db_url, publisher=_DownPublisher()) as gw:
        character = await gw.create_character(user)
        response = await gw.client.post(
            "/api/generate",
            json={"character_id": character["id"], "image_count": 3},
            headers=gw.auth(user),
        )
    assert response.status_code == 503
    assert "nothing was created" in response.json()["detail"]
    conn = await asyncpg.connect(gateway_db_url)
    try:
        jobs = await conn.fetchval("SELECT count(*) FROM gateway.jobs WHERE user_id = $1", user)
    finally:
        await conn.close()
    assert jobs == 0
