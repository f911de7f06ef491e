"""The "children" audience: set per character and per job, shown on both, carried to the
scheduler in the request (the job may only make its characters' audience stricter)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.requests import REQUEST_ADAPTER, GenerateImages, GenerateScene, GenerateStory
from tests.unit.gateway.conftest import Gateway


def _last(gateway: Gateway) -> Any:
    return REQUEST_ADAPTER.validate_json(gateway.broker.records(gateway.topics.requests)[-1].value)


async def _job(gateway: Gateway, user: str, job_id: str) -> dict[str, Any]:
    response = await gateway.client.get(f"/api/v1/jobs/{job_id}", headers=gateway.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_character_is_general_unless_set_and_shows_it(gateway: Gateway, user: str) -> None:
    plain = await gateway.create_character(user)
    assert plain["audience"] == "general"
    young = await gateway.create_character(user, audience="children")
    assert young["audience"] == "children"
    path = f"/api/v1/characters/{plain['id']}"
    response = await gateway.client.patch(
        path, json={"audience": "children"}, headers=gateway.auth(user)
    )
    assert response.status_code == 200, response.text
    fetched = await gateway.client.get(path, headers=gateway.auth(user))
    assert fetched.json()["audience"] == "children"


@pytest.mark.parametrize(
    ("method", "body"),
    [("post", {"name": "Mia", "audience": "kids"}), ("patch", {"audience": None})],
)
async def test_a_bad_character_audience_is_a_422_naming_the_field(
    gateway: Gateway, user: str, method: str, body: dict[str, object]
) -> None:
    path = "/api/v1/characters"
    if method == "patch":
        path += f"/{(await gateway.create_character(user))['id']}"
    response = await gateway.client.request(method, path, json=body, headers=gateway.auth(user))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "audience"]


async def test_a_pack_inherits_its_characters_audience(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user, audience="children")
    response = await gateway.client.post(
        "/api/generate",
        json={"character_id": character["id"], "image_count": 2},
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    command = _last(gateway)
    assert isinstance(command, GenerateImages)
    assert (command.audience, command.character.audience) == ("children", "children")
    assert (await _job(gateway, user, response.json()["job_id"]))["audience"] == "children"
    legacy = await gateway.client.get(response.json()["status_url"], headers=gateway.auth(user))
    assert legacy.json()["audience"] == "children"


async def test_a_job_may_make_a_general_character_stricter(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user)
    response = await gateway.client.post(
        "/api/v1/images/characters",
        json={"characterId": character["id"], "style": "storybook", "audience": "children"},
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    command = _last(gateway)
    assert (command.audience, command.character.audience) == ("children", "general")
    job = await _job(gateway, user, response.json()["jobId"])
    assert job["audience"] == "children"


async def test_a_job_may_not_loosen_a_childrens_character(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user, audience="children")
    before = len(gateway.broker.records(gateway.topics.requests))
    response = await gateway.client.post(
        "/api/generate",
        json={"character_id": character["id"], "image_count": 1, "audience": "general"},
        headers=gateway.auth(user),
    )
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "audience"]
    assert f"character {character['id']} is for 'children'" in problem["msg"]
    assert len(gateway.broker.records(gateway.topics.requests)) == before
    unknown = await gateway.client.post(
        "/api/generate",
        json={"prompt": "a lighthouse", "audience": "adults"},
        headers=gateway.auth(user),
    )
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["detail"][0]["loc"] == ["body", "audience"]


async def test_scenes_and_stories_take_their_strictest_character(
    gateway: Gateway, user: str
) -> None:
    cast = [
        str((await gateway.create_character(user, audience=audience))["id"])
        for audience in ("general", "children")
    ]
    story = await gateway.client.post(
        "/api/v1/stories",
        json={
            "title": "Grandma and Mia",
            "characterIds": cast,
            "pages": [{"pageNumber": 1, "text": "They bake a cake."}],
        },
        headers=gateway.auth(user),
    )
    assert story.status_code == 201, story.text
    story_id = story.json()["id"]
    scene = await gateway.client.post(
        "/api/v1/images/scenes",
        json={"storyId": story_id, "pageNumber": 1, "characterIds": cast, "style": "storybook"},
        headers=gateway.auth(user),
    )
    assert scene.status_code == 202, scene.text
    command = _last(gateway)
    assert isinstance(command, GenerateScene) and command.audience == "children"
    loosened = await gateway.client.post(
        f"/api/v1/images/stories/{story_id}/generate-all",
        json={"style": "storybook", "audience": "general"},
        headers=gateway.auth(user),
    )
    assert loosened.status_code == 422, loosened.text
    assert loosened.json()["detail"][0]["loc"] == ["body", "audience"]
    whole = await gateway.client.post(
        f"/api/v1/images/stories/{story_id}/generate-all",
        json={"style": "storybook"},
        headers=gateway.auth(user),
    )
    assert whole.status_code == 202, whole.text
    command = _last(gateway)
    assert isinstance(command, GenerateStory) and command.audience == "children"
    job = await _job(gateway, user, whole.json()["batchJobId"])
    assert job["audience"] == "children"


async def test_the_openapi_document_describes_audience(gateway: Gateway) -> None:
    schemas = (await gateway.client.get("/openapi.json")).json()["components"]["schemas"]
    for name in ("CharacterCreate", "GenerateRequest", "SceneRequest", "JobOut"):
        field = schemas[name]["properties"]["audience"]
        assert "children" in str(field), (name, field)
