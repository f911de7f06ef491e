from __future__ import annotations

from typing import Any

import pytest

from schemas.events import JobStatus
from schemas.jobs import image_id_for
from schemas.requests import (
    REQUEST_ADAPTER,
    DeleteImage,
    GenerateImages,
    JobKind,
    Quality,
    RegenerateImage,
    Request,
    ReviewImage,
    UserTier,
)
from tests.unit.gateway import image_events as ev
from tests.unit.gateway.conftest import Gateway


def _commands(gateway: Gateway) -> list[Request]:
    return [
        REQUEST_ADAPTER.validate_json(r.value)
        for r in gateway.broker.records(gateway.topics.requests)
    ]


async def _portrait(gateway: Gateway, user: str, **body: Any) -> dict[str, Any]:
    character = await gateway.create_character(user)
    payload = {"characterId": character["id"], "style": "watercolor", **body}
    response = await gateway.client.post(
        "/api/v1/images/characters", json=payload, headers=gateway.auth(user)
    )
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    result["characterId"] = character["id"]
    return result


async def _ready_portrait(gateway: Gateway, user: str) -> tuple[str, str, str]:
    """(job id, image id, character id) of a stored portrait."""
    body = await _portrait(gateway, user)
    job, image = body["jobId"], body["imageId"]
    await gateway.feed(
        ev.queued(job, user, image, kind="portrait", character=body["characterId"]),
        ev.started(job, user, image),
        ev.stored(job, user, image, kind="portrait", character=body["characterId"]),
        ev.finished(job, user, 1, 1, JobStatus.COMPLETED, cost=0.02),
    )
    return job, image, body["characterId"]


async def _get(gateway: Gateway, user: str, image_id: str) -> dict[str, Any]:
    response = await gateway.client.get(f"/api/v1/images/{image_id}", headers=gateway.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_portrait_is_queued_and_visible_at_once(gateway: Gateway, user: str) -> None:
    body = await _portrait(
        gateway, user, options={"size": "1024x576", "quality": "high", "model": "sdxl-turbo"}
    )
    assert body["status"] == "queued"
    assert body["imageId"] == image_id_for(body["jobId"], 0)
    assert body["estimatedCompletionTime"]
    [command] = _commands(gateway)
    assert isinstance(command, GenerateImages)
    assert (command.kind, command.image_count, command.user_id) == (JobKind.PORTRAIT, 1, user)
    assert (command.width, command.height, command.quality) == (1024, 576, Quality.HIGH)
    assert (command.model, command.style, command.tier) == (
        "sdxl-turbo",
        "watercolor",
        UserTier.PAID,
    )
    assert command.character.id == body["characterId"]

    image = await _get(gateway, user, body["imageId"])
    assert (image["status"], image["type"], image["version"]) == ("queued", "portrait", 1)
    assert image["url"] is None
    job = await gateway.client.get(f"/api/v1/jobs/{body['jobId']}", headers=gateway.auth(user))
    assert job.json()["kind"] == "portrait"
    assert [i["id"] for i in job.json()["images"]] == [body["imageId"]]


async def test_style_alias_is_canonicalised(gateway: Gateway, user: str) -> None:
    await _portrait(gateway, user, style="Watercolour")
    [command] = _commands(gateway)
    assert isinstance(command, GenerateImages)
    assert command.style == "watercolor"


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"style": "cubist-nightmare"}, ["body", "style"]),
        ({"options": {"size": "1000x1000"}}, ["body", "options", "size"]),
        ({"options": {"quality": "ultra"}}, ["body", "options", "quality"]),
        ({"options": {"model": "x" * 101}}, ["body", "options", "model"]),
        ({"characterId": "bad\x00id"}, ["body", "characterId"]),
        ({"colour": "red"}, ["body", "colour"]),
    ],
)
async def test_bad_portrait_fields_are_422_naming_the_field(
    gateway: Gateway, user: str, patch: dict[str, Any], loc: list[str]
) -> None:
    character = await gateway.create_character(user)
    payload = {"characterId": character["id"], "style": "anime", **patch}
    response = await gateway.client.post(
        "/api/v1/images/characters", json=payload, headers=gateway.auth(user)
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert _commands(gateway) == []


async def test_foreign_character_or_story_is_404(gateway: Gateway, user: str) -> None:
    foreign = await gateway.create_character("someone-else")
    own = await gateway.create_character(user)
    for payload in (
        {"characterId": foreign["id"], "style": "anime"},
        {"characterId": own["id"], "style": "anime", "storyId": "no-such-story"},
    ):
        response = await gateway.client.post(
            "/api/v1/images/characters", json=payload, headers=gateway.auth(user)
        )
        assert response.status_code == 404, response.text
    assert _commands(gateway) == []


async def test_stored_image_has_the_spec_fields(gateway: Gateway, user: str) -> None:
    job, image_id, character_id = await _ready_portrait(gateway, user)
    image = await _get(gateway, user, image_id)
    assert image["status"] == "completed"
    assert image["url"].startswith(f"memory://images/{user}/{image_id}/v1/display.png")
    assert image["thumbnailUrl"].startswith(f"memory://images/{user}/{image_id}/v1/thumbnail.png")
    assert image["cdnUrl"] is None  # no CDN configured
    assert (image["width"], image["height"], image["fileSize"]) == (512, 512, 5120)
    assert (image["characterId"], image["jobId"], image["style"]) == (
        character_id,
        job,
        "watercolor",
    )
    assert (image["consistencyScore"], image["flagged"], image["reviewStatus"]) == (
        0.91,
        False,
        "unreviewed",
    )
    assert [v["version"] for v in image["versions"]] == [1]


async def test_list_filters_and_pages_without_gaps(gateway: Gateway, user: str) -> None:
    _, portrait_id, character_id = await _ready_portrait(gateway, user)
    pack = "pack-" + user
    pack_ids = [f"{pack}-{i}" for i in range(4)]
    await gateway.feed(
        *(
            ev.stored(pack, user, pid, index=i, kind="pack", character="other")
            for i, pid in enumerate(pack_ids)
        )
    )
    auth = gateway.auth(user)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await gateway.client.get("/api/v1/images", params=params, headers=auth)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted([portrait_id, *pack_ids])
    assert len(seen) == len(set(seen))

    only = await gateway.client.get("/api/v1/images", params={"type": "portrait"}, headers=auth)
    assert [i["id"] for i in only.json()["items"]] == [portrait_id]
    by_char = await gateway.client.get(
        "/api/v1/images", params={"characterId": character_id}, headers=auth
    )
    assert [i["id"] for i in by_char.json()["items"]] == [portrait_id]
    # The spec's status word filters; the old word `ready` is an alias of it.
    for word in ("completed", "ready"):
        done = await gateway.client.get(
            "/api/v1/images", params={"status": word, "limit": 100}, headers=auth
        )
        assert done.status_code == 200, done.text
        assert sorted(i["id"] for i in done.json()["items"]) == sorted([portrait_id, *pack_ids])
        assert {i["status"] for i in done.json()["items"]} == {"completed"}
    queued = await gateway.client.get("/api/v1/images", params={"status": "queued"}, headers=auth)
    assert queued.json()["items"] == []
    assert (await gateway.client.get("/api/v1/images", headers=gateway.auth("nobody"))).json()[
        "items"
    ] == []
    for params in ({"cursor": "garbage!"}, {"type": "selfie"}, {"limit": 0}, {"status": "gone"}):
        bad = await gateway.client.get("/api/v1/images", params=params, headers=auth)
        assert bad.status_code == 422, params


async def test_regenerate_makes_linked_versions_up_to_the_limit(
    gateway: Gateway, user: str
) -> None:
    _, image_id, _ = await _ready_portrait(gateway, user)
    auth = gateway.auth(user)
    for version in range(2, 7):
        response = await gateway.client.post(
            f"/api/v1/images/{image_id}/regenerate",
            json={"modifications": {"prompt": "smiling", "seed": version, "style": "anime"}},
            headers=auth,
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["version"], body["parentVersion"], body["imageId"]) == (
            version,
            version - 1,
            image_id,
        )
        command = _commands(gateway)[-1]
        assert isinstance(command, RegenerateImage)
        assert (command.image_id, command.version, command.modifications.seed) == (
            image_id,
            version,
            version,
        )
        # While it runs the previous version stays on show; then the new one takes over.
        assert (await _get(gateway, user, image_id))["version"] == version - 1
        await gateway.feed(
            ev.stored(body["jobId"], user, image_id, version=version, kind="regenerate")
        )
        shown = await _get(gateway, user, image_id)
        assert (shown["version"], shown["parentVersion"], shown["type"]) == (
            version,
            version - 1,
            "portrait",
        )
    sixth = await gateway.client.post(
        f"/api/v1/images/{image_id}/regenerate", json={}, headers=auth
    )
    assert sixth.status_code == 409
    assert "limit of 5 regenerations" in sixth.json()["detail"]
    detail = await _get(gateway, user, image_id)
    assert [v["version"] for v in detail["versions"]] == [1, 2, 3, 4, 5, 6]
    assert detail["versions"][0]["url"] is not None  # the original is kept
    assert len(_commands(gateway)) == 1 + 5


async def test_regenerate_refusals(gateway: Gateway, user: str) -> None:
    queued = await _portrait(gateway, user)
    response = await gateway.client.post(
        f"/api/v1/images/{queued['imageId']}/regenerate", json={}, headers=gateway.auth(user)
    )
    assert response.status_code == 409
    assert "no finished version" in response.json()["detail"]
    _, image_id, _ = await _ready_portrait(gateway, user)
    bad = await gateway.client.post(
        f"/api/v1/images/{image_id}/regenerate",
        json={"modifications": {"prompt": "x" * 1001}},
        headers=gateway.auth(user),
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "modifications", "prompt"]


async def test_delete_hides_at_once_and_removes_on_confirmation(
    gateway: Gateway, user: str
) -> None:
    _, image_id, _ = await _ready_portrait(gateway, user)
    auth = gateway.auth(user)
    response = await gateway.client.delete(f"/api/v1/images/{image_id}", headers=auth)
    # The module spec's 200 {message}, plus what the caller needs to follow the deletion.
    assert response.status_code == 200
    assert response.json() == {
        "message": "Image deleted",
        "imageId": image_id,
        "status": "deleting",
    }
    command = _commands(gateway)[-1]
    assert isinstance(command, DeleteImage)
    assert (command.image_id, command.user_id) == (image_id, user)
    assert (await gateway.client.get(f"/api/v1/images/{image_id}", headers=auth)).status_code == 404
    listed = (await gateway.client.get("/api/v1/images", headers=auth)).json()["items"]
    assert image_id not in [i["id"] for i in listed]
    again = await gateway.client.delete(f"/api/v1/images/{image_id}", headers=auth)
    assert again.status_code == 404

    await gateway.feed(ev.deleted(user, image_id, [1]))
    async with gateway.state.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM images WHERE id = $1", image_id) == 0


async def test_delete_of_an_unstored_image_is_409(gateway: Gateway, user: str) -> None:
    body = await _portrait(gateway, user)
    response = await gateway.client.delete(
        f"/api/v1/images/{body['imageId']}", headers=gateway.auth(user)
    )
    assert response.status_code == 409
    assert body["jobId"] in response.json()["detail"]


async def test_review_is_pending_until_confirmed(gateway: Gateway, user: str) -> None:
    job, image_id, _ = await _ready_portrait(gateway, user)
    auth = gateway.auth(user)
    response = await gateway.client.post(
        f"/api/v1/images/{image_id}/review", json={"decision": "approved"}, headers=auth
    )
    assert response.status_code == 202
    assert response.json()["reviewStatus"] == "pending"
    command = _commands(gateway)[-1]
    assert isinstance(command, ReviewImage)
    assert command.decision.value == "approved"
    assert (await _get(gateway, user, image_id))["reviewStatus"] == "pending"
    await gateway.feed(ev.reviewed(job, user, image_id, 1, "approved"))
    assert (await _get(gateway, user, image_id))["reviewStatus"] == "approved"
    bad = await gateway.client.post(
        f"/api/v1/images/{image_id}/review", json={"decision": "maybe"}, headers=auth
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "decision"]


async def test_another_users_image_is_404_everywhere(gateway: Gateway, user: str) -> None:
    _, image_id, _ = await _ready_portrait(gateway, user)
    before = len(_commands(gateway))
    other = gateway.auth("intruder")
    client = gateway.client
    assert (await client.get(f"/api/v1/images/{image_id}", headers=other)).status_code == 404
    assert (await client.delete(f"/api/v1/images/{image_id}", headers=other)).status_code == 404
    for action, body in (("regenerate", {}), ("review", {"decision": "rejected"})):
        response = await client.post(
            f"/api/v1/images/{image_id}/{action}", json=body, headers=other
        )
        assert response.status_code == 404, action
    assert len(_commands(gateway)) == before
    assert (await _get(gateway, user, image_id))["status"] == "completed"


async def test_unauthenticated_is_401(gateway: Gateway) -> None:
    response = await gateway.client.get("/api/v1/images")
    assert response.status_code == 401


def test_cdn_url_uses_the_configured_base_and_the_display_key() -> None:
    from imagegen.blobstore import InMemoryBlobStore
    from services.gateway.gallery import Links

    renditions = {
        "original": {"key": "users/u/characters/c/images/i/v1/original.png"},
        "display": {"key": "users/u/characters/c/images/i/v1/display.jpg"},
    }
    links = Links(InMemoryBlobStore(), 3600, cdn_base_url="https://cdn.example.test/media/")
    assert links.cdn(renditions) == (
        "https://cdn.example.test/media/users/u/characters/c/images/i/v1/display.jpg"
    )
    assert Links(InMemoryBlobStore(), 3600).cdn(renditions) is None
