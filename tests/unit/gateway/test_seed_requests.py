"""The seed documents' own request bodies (../shared/seeds), copied verbatim, are accepted;
and the answers carry the shapes those documents promise (issue 18)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from schemas.events import JobStatus
from schemas.requests import (
    REQUEST_ADAPTER,
    GenerateImages,
    JobKind,
    PhotoGroup,
    Quality,
    Request,
)
from services.gateway.offers import from_settings
from tests.unit.gateway import image_events as ev
from tests.unit.gateway.conftest import Gateway, gateway_settings, running_gateway
from tests.unit.gateway.resources_support import image_bytes
from tests.unit.gateway.test_scenes import _story

# The module spec's FR-IMGGEN-001 body, its values as the spec gives them.
_MODULE_SPEC_PORTRAIT = {
    "style": "cartoon",
    "options": {"model": "dall-e-3", "size": "1024x1024", "quality": "hd"},
}
# The Modal/Qwen summary's curl body, verbatim.
_MODAL_PROMPT = {"prompt": "A phoenix rising", "style": "Anime", "width": 1024, "height": 1024}
_CATALOGUE = json.dumps(
    [
        {"provider": "demo", "model": "dcgan-digiface-demo", "quality": "draft",
         "gpu_price_per_hour_usd": "2.5"},
        {"provider": "openai", "model": "dall-e-3", "quality": "high",
         "price_per_image_usd": "0.08"},
    ]
)  # fmt: skip


@pytest.fixture
async def offering(gateway_db_url: str) -> AsyncIterator[Gateway]:
    """A gateway whose catalogue offers the demo model and dall-e-3."""
    async with running_gateway(gateway_db_url, catalogue=_CATALOGUE) as gw:
        yield gw


def _commands(gateway: Gateway) -> list[Request]:
    return [
        REQUEST_ADAPTER.validate_json(r.value)
        for r in gateway.broker.records(gateway.topics.requests)
    ]


async def test_module_spec_portrait_body_is_accepted_with_hd(offering: Gateway, user: str) -> None:
    character = await offering.create_character(user)
    body = {"characterId": character["id"], **_MODULE_SPEC_PORTRAIT}
    response = await offering.client.post(
        "/api/v1/images/characters", json=body, headers=offering.auth(user)
    )
    assert response.status_code == 202, response.text
    assert {"jobId", "imageId", "status", "estimatedCompletionTime"} <= response.json().keys()
    (command,) = _commands(offering)
    assert isinstance(command, GenerateImages)
    assert (command.model, command.quality) == ("dall-e-3", Quality.HIGH)


async def test_a_model_nobody_offers_is_422_naming_the_offers(offering: Gateway, user: str) -> None:
    character = await offering.create_character(user)
    body = {
        "characterId": character["id"],
        "style": "cartoon",
        "options": {"model": "midjourney-v6", "quality": "hd"},
    }
    response = await offering.client.post(
        "/api/v1/images/characters", json=body, headers=offering.auth(user)
    )
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body", "options", "model"]
    assert "dall-e-3" in problem["msg"] and "dcgan-digiface-demo" in problem["msg"]
    assert _commands(offering) == []


async def test_a_quality_nobody_offers_for_the_model_is_422(offering: Gateway, user: str) -> None:
    character = await offering.create_character(user)
    response = await offering.client.post(
        "/api/generate",
        json={"character_id": character["id"], "image_count": 2, "model": "dcgan-digiface-demo",
              "quality": "high"},
        headers=offering.auth(user),
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "quality"]
    assert _commands(offering) == []


def test_an_openai_key_offers_dall_e_3_and_gpt_image_1(gateway_db_url: str) -> None:
    settings = gateway_settings(gateway_db_url).model_copy(
        update={"openai_api_key": SecretStr("sk-test")}
    )
    offers = from_settings(settings)
    assert offers.best is not None
    assert {"dall-e-3", "gpt-image-1"} <= offers.best.keys()
    offers.require(Quality.HIGH, "dall-e-3", ("body",))  # no error
    # No catalogue and no key: the gateway does not know, the scheduler decides.
    assert from_settings(gateway_settings(gateway_db_url)).best is None


async def test_epic_pack_body_is_accepted(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user)
    # EP-005: POST /api/generate  Body: { character_id, image_count }
    body = {"character_id": character["id"], "image_count": 6}
    response = await gateway.client.post("/api/generate", json=body, headers=gateway.auth(user))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["job_id"] == answer["jobId"] and answer["status"] == "queued"
    (command,) = _commands(gateway)
    assert isinstance(command, GenerateImages)
    assert (command.kind, command.image_count, command.width) == (JobKind.PACK, 6, 1024)


async def test_camel_case_is_accepted_on_the_snake_case_endpoint(
    gateway: Gateway, user: str
) -> None:
    character = await gateway.create_character(user)
    body = {"characterId": character["id"], "imageCount": 2, "style": "watercolor",
            "size": "1024x768", "quality": "hd"}  # fmt: skip
    response = await gateway.client.post("/api/generate", json=body, headers=gateway.auth(user))
    assert response.status_code == 202, response.text
    (command,) = _commands(gateway)
    assert isinstance(command, GenerateImages)
    assert (command.style, command.width, command.height, command.quality) == (
        "watercolor",
        1024,
        768,
        Quality.HIGH,
    )


async def test_modal_prompt_only_body_is_accepted_and_polled(gateway: Gateway, user: str) -> None:
    response = await gateway.client.post(
        "/api/generate", json=_MODAL_PROMPT, headers=gateway.auth(user)
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    # "Should return: {"jobId": "uuid", "status": "queued"}"
    assert answer["status"] == "queued" and answer["jobId"] == answer["job_id"]
    assert answer["kind"] == "prompt"
    job = answer["jobId"]
    (command,) = _commands(gateway)
    assert isinstance(command, GenerateImages)
    assert command.kind is JobKind.PROMPT
    assert (command.prompt, command.style, command.width, command.height) == (
        "A phoenix rising",
        "anime",
        1024,
        1024,
    )
    status = await gateway.client.get(f"/api/generate/status/{job}", headers=gateway.auth(user))
    assert status.status_code == 200, status.text
    assert status.json()["status"] == "queued"
    assert status.json()["result_url"] is None


async def test_prompt_only_is_moderated(gateway: Gateway, user: str) -> None:
    body = {**_MODAL_PROMPT, "prompt": "a nude person"}
    response = await gateway.client.post("/api/generate", json=body, headers=gateway.auth(user))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "prompt"]
    assert _commands(gateway) == []


async def test_prompt_and_character_together_is_422(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user)
    body = {**_MODAL_PROMPT, "character_id": character["id"]}
    response = await gateway.client.post("/api/generate", json=body, headers=gateway.auth(user))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "prompt"]
    empty = await gateway.client.post("/api/generate", json={}, headers=gateway.auth(user))
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["loc"] == ["body", "character_id"]


async def test_photo_pack_needs_five_reference_photos(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user)
    body = {"character_id": character["id"], "photo_group": "professional"}
    response = await gateway.client.post("/api/generate", json=body, headers=gateway.auth(user))
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body", "character_id"]
    assert "5-8 reference photos" in problem["msg"]
    assert _commands(gateway) == []


async def _stored_portrait(gateway: Gateway, user: str) -> tuple[str, str]:
    character = await gateway.create_character(user)
    response = await gateway.client.post(
        "/api/v1/images/characters",
        json={"character_id": character["id"], "style": "watercolor"},  # snake_case too
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    job, image, who = response.json()["jobId"], response.json()["imageId"], str(character["id"])
    await gateway.feed(
        ev.queued(job, user, image, kind="portrait", character=who),
        ev.started(job, user, image),
        ev.stored(job, user, image, kind="portrait", character=who),
        ev.finished(job, user, 1, 1, JobStatus.COMPLETED, cost=0.02),
    )
    return job, image


async def test_list_answers_images_and_renditions_have_urls(gateway: Gateway, user: str) -> None:
    _, image = await _stored_portrait(gateway, user)
    listed: dict[str, Any] = (
        await gateway.client.get("/api/v1/images", headers=gateway.auth(user))
    ).json()
    assert [i["id"] for i in listed["images"]] == [image]
    assert listed["items"] == listed["images"] and "nextCursor" in listed
    shown = listed["images"][0]
    assert shown["url"]
    # This stored event has display and thumbnail only: the others are named, and null.
    assert shown["originalUrl"] is None and shown["printUrl"] is None


async def test_regenerate_answers_new_image_id(gateway: Gateway, user: str) -> None:
    _, image = await _stored_portrait(gateway, user)
    response = await gateway.client.post(
        f"/api/v1/images/{image}/regenerate",
        json={"modifications": {"prompt": "smiling", "seed": 42}},
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    assert response.json()["newImageId"] == image
    assert response.json()["status"] == "queued"


async def test_module_spec_scene_and_generate_all_bodies_are_accepted(
    offering: Gateway, user: str
) -> None:
    story, cast = await _story(offering, user)
    # FR-IMGGEN-002, with the spec's fields and defaults filled in.
    scene = {
        "storyId": story,
        "pageNumber": 1,
        "characterIds": cast,
        "sceneDescription": "Mia and the fox cross a moonlit bridge",
        "style": "watercolor",
        "options": {"model": "dall-e-3", "aspectRatio": "16:9", "includeText": False},
    }
    response = await offering.client.post(
        "/api/v1/images/scenes", json=scene, headers=offering.auth(user)
    )
    assert response.status_code == 202, response.text
    assert {"jobId", "imageId", "status"} <= response.json().keys()
    # FR-IMGGEN-003, the spec's body with its defaults.
    everything = {
        "style": "storybook",
        "includeCharacterPortraits": True,
        "includeSceneImages": True,
        "imagesPerPage": 1,
    }
    response = await offering.client.post(
        f"/api/v1/images/stories/{story}/generate-all", json=everything, headers=offering.auth(user)
    )
    assert response.status_code == 202, response.text
    assert {"batchJobId", "totalImages", "estimatedCompletionTime"} <= response.json().keys()
    # The same in snake_case is accepted too.
    snake = {"style": "storybook", "include_character_portraits": False, "images_per_page": 2}
    response = await offering.client.post(
        f"/api/v1/images/stories/{story}/generate-all", json=snake, headers=offering.auth(user)
    )
    assert response.status_code == 202, response.text
    assert response.json()["totalImages"] == 4


async def test_list_filters_accept_snake_case_too(gateway: Gateway, user: str) -> None:
    _, image = await _stored_portrait(gateway, user)
    other = await gateway.create_character(user)
    for key in ("characterId", "character_id"):
        listed = await gateway.client.get(
            "/api/v1/images", params={key: str(other["id"])}, headers=gateway.auth(user)
        )
        assert listed.status_code == 200, listed.text
        assert listed.json()["images"] == [], key
    everything = await gateway.client.get("/api/v1/images", headers=gateway.auth(user))
    assert [i["id"] for i in everything.json()["images"]] == [image]


async def test_a_photo_pack_with_five_photos_uses_its_group(gateway: Gateway, user: str) -> None:
    gateway.app.state.face_detector = None  # these test photos have no faces to find
    character = await gateway.create_character(user)
    colours = ["white", "red", "green", "blue", "black"]
    files = [
        ("photos", (f"p{i}.png", image_bytes("PNG", colour=c), "image/png"))
        for i, c in enumerate(colours)
    ]
    uploaded = await gateway.client.post(
        f"/api/v1/characters/{character['id']}/reference-photos",
        files=files,
        headers=gateway.auth(user),
    )
    assert uploaded.status_code == 201, uploaded.text
    body = {"characterId": character["id"], "photoGroup": "lifestyle", "style": "realistic",
            "quality": "high", "size": "1024x1024"}  # fmt: skip
    response = await gateway.client.post("/api/generate", json=body, headers=gateway.auth(user))
    assert response.status_code == 202, response.text
    assert response.json()["image_count"] == 9
    (command,) = _commands(gateway)
    assert isinstance(command, GenerateImages)
    assert command.photo_group is PhotoGroup.LIFESTYLE and command.image_count == 9
    assert len(command.character.reference_keys) == 5
    assert (command.style, command.quality) == ("realistic", Quality.HIGH)
