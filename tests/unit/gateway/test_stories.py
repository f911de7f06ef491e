from __future__ import annotations

from typing import Any

from services.gateway import stories
from tests.unit.gateway.conftest import Gateway


async def _story(gateway: Gateway, user: str, **overrides: Any) -> dict[str, Any]:
    mia = await gateway.create_character(user, name="Mia")
    leo = await gateway.create_character(user, name="Leo")
    body = {
        "title": "Mia and the Lighthouse",
        "characterIds": [mia["id"], leo["id"]],
        "pages": [
            {"pageNumber": 2, "text": "They climbed.", "characterIds": [leo["id"]]},
            {
                "pageNumber": 1,
                "text": "Mia found a map.",
                "sceneDescription": "a dusty attic",
                "characterIds": [mia["id"]],
            },
        ],
        **overrides,
    }
    response = await gateway.client.post("/api/v1/stories", json=body, headers=gateway.auth(user))
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_create_read_list_update_delete(gateway: Gateway, user: str) -> None:
    created = await _story(gateway, user)
    assert [p["pageNumber"] for p in created["pages"]] == [1, 2]  # kept in page order
    assert created["pages"][0]["sceneDescription"] == "a dusty attic"
    assert created["pages"][1]["sceneDescription"] is None
    path = f"/api/v1/stories/{created['id']}"
    fetched = await gateway.client.get(path, headers=gateway.auth(user))
    assert fetched.json() == created

    listed = await gateway.client.get("/api/v1/stories", headers=gateway.auth(user))
    assert [s["id"] for s in listed.json()["items"]] == [created["id"]]
    assert listed.json()["nextCursor"] is None

    patched = await gateway.client.patch(
        path, json={"title": "A new title"}, headers=gateway.auth(user)
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "A new title"
    assert patched.json()["pages"] == created["pages"]

    deleted = await gateway.client.delete(path, headers=gateway.auth(user))
    assert deleted.status_code == 204
    assert (await gateway.client.get(path, headers=gateway.auth(user))).status_code == 404


async def test_load_spec_gives_the_contract_with_character_specs(
    gateway: Gateway, user: str
) -> None:
    created = await _story(gateway, user)
    spec = await stories.load_spec(gateway.state.pool, user, created["id"])
    assert spec is not None
    assert spec.title == "Mia and the Lighthouse"
    assert [p.page_number for p in spec.pages] == [1, 2]
    assert [c.name for c in spec.characters] == ["Mia", "Leo"]
    assert spec.pages[0].character_ids == [spec.characters[0].id]
    assert await stories.load_spec(gateway.state.pool, "someone-else", created["id"]) is None


async def test_unknown_and_foreign_character_ids_are_refused_naming_the_field(
    gateway: Gateway, user: str
) -> None:
    mine = await gateway.create_character(user)
    theirs = await gateway.create_character("other-" + user)
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        (
            {"characterIds": [mine["id"], "nope"], "pages": [{"pageNumber": 1}]},
            ["body", "characterIds", 1],
        ),
        (
            {"characterIds": [theirs["id"]], "pages": [{"pageNumber": 1}]},
            ["body", "characterIds", 0],
        ),
        (
            {"characterIds": [mine["id"], mine["id"]], "pages": [{"pageNumber": 1}]},
            ["body", "characterIds", 1],
        ),
        (
            {
                "characterIds": [mine["id"]],
                "pages": [{"pageNumber": 1}, {"pageNumber": 2, "characterIds": [theirs["id"]]}],
            },
            ["body", "pages", 1, "characterIds", 0],
        ),
        (
            {"characterIds": [mine["id"]], "pages": [{"pageNumber": 1}, {"pageNumber": 1}]},
            ["body", "pages", 1, "pageNumber"],
        ),
        ({"characterIds": [mine["id"]], "pages": []}, ["body", "pages"]),
        ({"characterIds": [], "pages": [{"pageNumber": 1}]}, ["body", "characterIds"]),
        (
            {"characterIds": [mine["id"]], "pages": [{"pageNumber": 0}]},
            ["body", "pages", 0, "pageNumber"],
        ),
        (
            {"characterIds": [mine["id"]], "pages": [{"pageNumber": 1, "text": "x" * 4001}]},
            ["body", "pages", 0, "text"],
        ),
    ]
    for extra, loc in cases:
        body = {"title": "T", **extra}
        response = await gateway.client.post(
            "/api/v1/stories", json=body, headers=gateway.auth(user)
        )
        assert response.status_code == 422, (extra, response.text)
        assert response.json()["detail"][0]["loc"] == loc, response.json()
    listed = await gateway.client.get("/api/v1/stories", headers=gateway.auth(user))
    assert listed.json()["items"] == []


async def test_patch_is_validated_like_a_create(gateway: Gateway, user: str) -> None:
    created = await _story(gateway, user)
    path = f"/api/v1/stories/{created['id']}"
    # Dropping Leo from the cast while page 2 still shows him is refused.
    response = await gateway.client.patch(
        path, json={"characterIds": [created["characterIds"][0]]}, headers=gateway.auth(user)
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "pages", 1, "characterIds", 0]
    response = await gateway.client.patch(path, json={"title": None}, headers=gateway.auth(user))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "title"]
    fetched = await gateway.client.get(path, headers=gateway.auth(user))
    assert fetched.json() == created


async def test_other_users_stories_are_404(gateway: Gateway, user: str) -> None:
    created = await _story(gateway, user)
    path = f"/api/v1/stories/{created['id']}"
    intruder = gateway.auth("intruder-" + user)
    assert (await gateway.client.get(path, headers=intruder)).status_code == 404
    assert (
        await gateway.client.patch(path, json={"title": "X"}, headers=intruder)
    ).status_code == 404
    assert (await gateway.client.delete(path, headers=intruder)).status_code == 404
    listed = await gateway.client.get("/api/v1/stories", headers=intruder)
    assert listed.json()["items"] == []
    assert (await gateway.client.get(path, headers=gateway.auth(user))).status_code == 200


async def test_story_text_is_moderated(gateway: Gateway, user: str) -> None:
    mia = await gateway.create_character(user)
    body = {
        "title": "T",
        "characterIds": [mia["id"]],
        "pages": [{"pageNumber": 1, "sceneDescription": "a gory battlefield"}],
    }
    response = await gateway.client.post("/api/v1/stories", json=body, headers=gateway.auth(user))
    assert response.status_code == 422
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body", "pages", 0, "sceneDescription"]
    assert (problem["type"], problem["category"]) == ("moderation", "violence/graphic")


async def test_stories_page_with_a_cursor(gateway: Gateway, user: str) -> None:
    mia = await gateway.create_character(user)
    ids = []
    for i in range(3):
        body = {"title": f"S{i}", "characterIds": [mia["id"]], "pages": [{"pageNumber": 1}]}
        response = await gateway.client.post(
            "/api/v1/stories", json=body, headers=gateway.auth(user)
        )
        ids.append(response.json()["id"])
    first = (
        await gateway.client.get("/api/v1/stories", params={"limit": 2}, headers=gateway.auth(user))
    ).json()
    second = (
        await gateway.client.get(
            "/api/v1/stories",
            params={"limit": 2, "cursor": first["nextCursor"]},
            headers=gateway.auth(user),
        )
    ).json()
    assert [s["id"] for s in first["items"] + second["items"]] == list(reversed(ids))
    assert second["nextCursor"] is None
