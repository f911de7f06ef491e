from __future__ import annotations

from typing import Any

from schemas.jobs import image_id_for
from schemas.requests import REQUEST_ADAPTER, AspectRatio, GenerateScene, GenerateStory
from tests.unit.gateway.conftest import Gateway


async def _story(gateway: Gateway, user: str) -> tuple[str, list[str]]:
    cast = [str((await gateway.create_character(user))["id"]) for _ in range(2)]
    response = await gateway.client.post(
        "/api/v1/stories",
        json={
            "title": "Mia and the Lighthouse",
            "characterIds": cast,
            "pages": [
                {"pageNumber": 1, "text": "Mia sees a light.", "sceneDescription": "a cliff"},
                {"pageNumber": 2, "text": "She climbs.", "characterIds": [cast[0]]},
            ],
        },
        headers=gateway.auth(user),
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"]), cast


def _last(gateway: Gateway) -> Any:
    return REQUEST_ADAPTER.validate_json(gateway.broker.records(gateway.topics.requests)[-1].value)


async def test_scene_is_published_with_page_and_characters(gateway: Gateway, user: str) -> None:
    story, cast = await _story(gateway, user)
    response = await gateway.client.post(
        "/api/v1/images/scenes",
        json={
            "storyId": story,
            "pageNumber": 1,
            "characterIds": cast,
            "style": "storybook",
            "options": {"aspectRatio": "4:3", "includeText": True},
        },
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["imageId"] == image_id_for(body["jobId"], 0)
    command = _last(gateway)
    assert isinstance(command, GenerateScene)
    assert (command.story_id, command.page_number, command.aspect_ratio) == (
        story,
        1,
        AspectRatio.CLASSIC,
    )
    assert [c.id for c in command.characters] == cast
    assert (command.scene_description, command.page_text, command.include_text) == (
        "a cliff",
        "Mia sees a light.",
        True,
    )
    image = await gateway.client.get(
        f"/api/v1/images/{body['imageId']}", headers=gateway.auth(user)
    )
    assert (image.json()["type"], image.json()["pageNumber"]) == ("scene", 1)


async def test_scene_refusals(gateway: Gateway, user: str) -> None:
    story, cast = await _story(gateway, user)
    outsider = str((await gateway.create_character(user))["id"])
    foreign = str((await gateway.create_character("someone-else"))["id"])
    before = len(gateway.broker.records(gateway.topics.requests))
    base = {"storyId": story, "pageNumber": 1, "characterIds": cast, "style": "anime"}
    cases: list[tuple[dict[str, Any], int]] = [
        ({"pageNumber": 9}, 422),
        ({"characterIds": [outsider]}, 422),
        ({"characterIds": [foreign]}, 404),
        ({"storyId": "no-such-story"}, 404),
        ({"options": {"aspectRatio": "21:9"}}, 422),
        ({"characterIds": []}, 422),
        ({"style": "nope"}, 422),
    ]
    for patch, code in cases:
        response = await gateway.client.post(
            "/api/v1/images/scenes", json={**base, **patch}, headers=gateway.auth(user)
        )
        assert response.status_code == code, (patch, response.text)
    other = await gateway.client.post(
        "/api/v1/images/scenes", json=base, headers=gateway.auth("intruder")
    )
    assert other.status_code == 404
    assert len(gateway.broker.records(gateway.topics.requests)) == before


async def test_story_generate_all_counts_images(gateway: Gateway, user: str) -> None:
    story, cast = await _story(gateway, user)
    response = await gateway.client.post(
        f"/api/v1/images/stories/{story}/generate-all",
        json={"style": "watercolor", "imagesPerPage": 2},
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["totalImages"] == len(cast) + 2 * 2
    command = _last(gateway)
    assert isinstance(command, GenerateStory)
    assert (command.job_id, command.images_per_page, command.story.id) == (
        body["batchJobId"],
        2,
        story,
    )
    job = await gateway.client.get(f"/api/v1/jobs/{body['batchJobId']}", headers=gateway.auth(user))
    assert (job.json()["kind"], job.json()["total"]) == ("story", 6)

    nothing = await gateway.client.post(
        f"/api/v1/images/stories/{story}/generate-all",
        json={"style": "anime", "includeCharacterPortraits": False, "includeSceneImages": False},
        headers=gateway.auth(user),
    )
    assert nothing.status_code == 422
    foreign = await gateway.client.post(
        f"/api/v1/images/stories/{story}/generate-all",
        json={"style": "anime"},
        headers=gateway.auth("intruder"),
    )
    assert foreign.status_code == 404
    too_many = await gateway.client.post(
        f"/api/v1/images/stories/{story}/generate-all",
        json={"style": "anime", "imagesPerPage": 5},
        headers=gateway.auth(user),
    )
    assert too_many.status_code == 422
