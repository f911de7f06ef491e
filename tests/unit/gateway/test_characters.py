from __future__ import annotations

from schemas.characters import MAX_SEED
from tests.unit.gateway.conftest import Gateway


async def test_create_get_and_list_own_characters(gateway: Gateway, user: str) -> None:
    body = {
        "name": "Mia",
        "description": "A curious explorer",
        "attributes": {
            "ageRange": "8-10",
            "hairColour": "red",
            "distinctiveFeatures": ["freckles"],
        },
        "styleModifiers": ["watercolour"],
        "artStyle": "storybook",
        "seed": 42,
    }
    response = await gateway.client.post(
        "/api/v1/characters", json=body, headers=gateway.auth(user)
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["seed"] == 42
    assert created["artStyle"] == "storybook"
    assert created["styleModifiers"] == ["watercolour"]
    assert created["attributes"]["hairColour"] == "red"
    assert created["attributes"]["distinctiveFeatures"] == ["freckles"]
    assert "createdAt" in created

    fetched = await gateway.client.get(
        f"/api/v1/characters/{created['id']}", headers=gateway.auth(user)
    )
    assert fetched.status_code == 200
    assert fetched.json() == created

    other = await gateway.create_character(user, name="Leo")
    listed = await gateway.client.get("/api/v1/characters", headers=gateway.auth(user))
    assert [c["name"] for c in listed.json()["items"]] == ["Leo", "Mia"]
    assert other["id"] != created["id"]


async def test_seed_is_assigned_when_absent(gateway: Gateway, user: str) -> None:
    created = await gateway.create_character(user)
    seed = created["seed"]
    assert isinstance(seed, int)
    assert 0 <= seed <= MAX_SEED


async def test_other_users_characters_are_invisible(gateway: Gateway, user: str) -> None:
    created = await gateway.create_character(user)
    response = await gateway.client.get(
        f"/api/v1/characters/{created['id']}", headers=gateway.auth("intruder")
    )
    assert response.status_code == 404
    listed = await gateway.client.get("/api/v1/characters", headers=gateway.auth("intruder"))
    assert created["id"] not in [c["id"] for c in listed.json()["items"]]


async def test_bad_character_input_names_the_field(gateway: Gateway, user: str) -> None:
    cases = [
        ({"name": ""}, "name"),
        ({"name": "Mia", "seed": -1}, "seed"),
        ({"name": "Mia", "seed": 2**32}, "seed"),
        ({"name": "Mia", "attributes": {"hairColor": "red"}}, "hairColor"),
    ]
    for body, field in cases:
        response = await gateway.client.post(
            "/api/v1/characters", json=body, headers=gateway.auth(user)
        )
        assert response.status_code == 422, body
        assert field in str(response.json()["detail"][0]["loc"]), response.json()
    listed = await gateway.client.get("/api/v1/characters", headers=gateway.auth(user))
    assert listed.json()["items"] == []


# --- update, paging, delete, reference set ------------------------------------------------

from schemas.events import EventBase, JobStatus  # noqa: E402
from schemas.requests import GenerateImages, JobKind  # noqa: E402
from services.gateway import characters  # noqa: E402
from tests.unit.gateway import factories  # noqa: E402
from tests.unit.gateway.resources_support import published  # noqa: E402


async def test_unknown_art_style_is_refused_and_aliases_normalised(
    gateway: Gateway, user: str
) -> None:
    response = await gateway.client.post(
        "/api/v1/characters",
        json={"name": "Mia", "artStyle": "vaporwave"},
        headers=gateway.auth(user),
    )
    assert response.status_code == 422
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body", "artStyle"]
    assert "known styles" in problem["msg"]
    created = await gateway.create_character(user, artStyle="Watercolour")
    assert created["artStyle"] == "watercolor"
    assert created["referenceSet"] == {
        "status": "none",
        "jobId": None,
        "fingerprint": None,
        "imageCount": 0,
    }
    assert created["referencePhotos"] == []


async def test_patch_changes_only_what_is_sent(gateway: Gateway, user: str) -> None:
    created = await gateway.create_character(
        user,
        description="brave",
        attributes={"hairColour": "red", "eyeColour": "green", "distinctiveFeatures": ["x"]},
        seed=5,
    )
    response = await gateway.client.patch(
        f"/api/v1/characters/{created['id']}",
        json={"attributes": {"hairColour": "black", "distinctiveFeatures": None}},
        headers=gateway.auth(user),
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["attributes"]["hairColour"] == "black"
    assert updated["attributes"]["eyeColour"] == "green"
    assert updated["attributes"]["distinctiveFeatures"] == []
    assert (updated["name"], updated["description"], updated["seed"]) == ("Mia", "brave", 5)
    assert updated["updatedAt"] > created["updatedAt"]
    # No reference set existed: nothing is queued for a changed look.
    assert published(gateway) == []


async def test_patch_refuses_nulls_unknown_fields_and_bad_values(
    gateway: Gateway, user: str
) -> None:
    created = await gateway.create_character(user, seed=9)
    cases = [
        ({"name": None}, ["body", "name"]),
        ({"seed": None}, ["body", "seed"]),
        ({"artStyle": "nope"}, ["body", "artStyle"]),
        ({"attributes": {"hairColor": "red"}}, ["body", "attributes", "hairColor"]),
        ({"styleModifiers": ["x" * 101]}, ["body", "styleModifiers", 0]),
        ({"nickname": "M"}, ["body", "nickname"]),
    ]
    for body, loc in cases:
        response = await gateway.client.patch(
            f"/api/v1/characters/{created['id']}", json=body, headers=gateway.auth(user)
        )
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"] == loc, response.json()
    fetched = await gateway.client.get(
        f"/api/v1/characters/{created['id']}", headers=gateway.auth(user)
    )
    assert fetched.json() == created


async def test_other_users_cannot_patch_or_delete(gateway: Gateway, user: str) -> None:
    created = await gateway.create_character(user)
    path = f"/api/v1/characters/{created['id']}"
    intruder = gateway.auth("intruder-" + user)
    assert (
        await gateway.client.patch(path, json={"name": "X"}, headers=intruder)
    ).status_code == 404
    assert (await gateway.client.delete(path, headers=intruder)).status_code == 404
    fetched = await gateway.client.get(path, headers=gateway.auth(user))
    assert fetched.json()["name"] == "Mia"


async def test_list_pages_with_a_cursor(gateway: Gateway, user: str) -> None:
    names = [f"c{i}" for i in range(5)]
    for name in names:
        await gateway.create_character(user, name=name)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await gateway.client.get(
            "/api/v1/characters", params=params, headers=gateway.auth(user)
        )
        assert response.status_code == 200
        body = response.json()
        seen += [c["name"] for c in body["items"]]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(names))
    assert pages == 3
    bad = await gateway.client.get(
        "/api/v1/characters", params={"cursor": "garbage"}, headers=gateway.auth(user)
    )
    assert bad.status_code == 422
    assert "cursor" in str(bad.json()["detail"])
    too_big = await gateway.client.get(
        "/api/v1/characters", params={"limit": 1000}, headers=gateway.auth(user)
    )
    assert too_big.status_code == 422
    assert too_big.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_delete_removes_the_character_and_its_photos(gateway: Gateway, user: str) -> None:
    created = await gateway.create_character(user)
    key = f"references/{user}/{created['id']}/abc.png"
    async with gateway.state.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO reference_photos (id, user_id, character_id, key, sha256, content_type,"
            " size_bytes, width, height) VALUES ('p1-' || $1, $2, $1, $3, 'abc', 'image/png',"
            " 3, 1, 1)",
            created["id"],
            user,
            key,
        )
    await gateway.blobs.put(key, b"png", "image/png")
    path = f"/api/v1/characters/{created['id']}"
    response = await gateway.client.delete(path, headers=gateway.auth(user))
    assert response.status_code == 204
    assert (await gateway.client.get(path, headers=gateway.auth(user))).status_code == 404
    assert (await gateway.client.delete(path, headers=gateway.auth(user))).status_code == 404
    assert not await gateway.blobs.exists(key)


async def test_delete_is_refused_while_a_story_casts_the_character(
    gateway: Gateway, user: str
) -> None:
    created = await gateway.create_character(user)
    story = await gateway.client.post(
        "/api/v1/stories",
        json={"title": "T", "characterIds": [created["id"]], "pages": [{"pageNumber": 1}]},
        headers=gateway.auth(user),
    )
    assert story.status_code == 201, story.text
    path = f"/api/v1/characters/{created['id']}"
    response = await gateway.client.delete(path, headers=gateway.auth(user))
    assert response.status_code == 409
    assert story.json()["id"] in response.json()["detail"]
    assert (await gateway.client.get(path, headers=gateway.auth(user))).status_code == 200


async def test_reference_set_builds_goes_stale_on_a_new_look_and_rebuilds(
    gateway: Gateway, user: str
) -> None:
    created = await gateway.create_character(user, attributes={"hairColour": "red"})
    path = f"/api/v1/characters/{created['id']}"
    response = await gateway.client.post(f"{path}/reference-set", headers=gateway.auth(user))
    assert response.status_code == 202, response.text
    first_job = response.json()["jobId"]
    assert response.json()["referenceSet"]["status"] == "building"
    again = await gateway.client.post(f"{path}/reference-set", headers=gateway.auth(user))
    assert again.status_code == 409

    [command] = published(gateway)
    assert isinstance(command, GenerateImages)
    assert (command.kind, command.job_id, command.image_count) == (JobKind.REFERENCE, first_job, 5)
    assert command.character.id == created["id"]

    # The set completes: it is ready and its keys join the character's spec.
    events: list[EventBase] = [factories.queued(first_job, user, i, 5) for i in range(5)]
    events += [factories.stored(first_job, user, i) for i in range(5)]
    events.append(factories.pack_completed(first_job, user, 5, 5, 0, JobStatus.COMPLETED))
    await gateway.feed(*events)
    ready = (await gateway.client.get(path, headers=gateway.auth(user))).json()
    assert ready["referenceSet"]["status"] == "ready"
    assert ready["referenceSet"]["imageCount"] == 5
    spec = await characters.spec_for(gateway.state.pool, user, created["id"])
    assert spec is not None
    assert spec.reference_keys == [f"images/{user}/{first_job}/{i}/display.png" for i in range(5)]
    assert spec.appearance_fingerprint() == ready["referenceSet"]["fingerprint"]

    # A rename keeps the look: nothing is queued.
    renamed = await gateway.client.patch(path, json={"name": "Mia R"}, headers=gateway.auth(user))
    assert renamed.json()["referenceSet"]["status"] == "ready"
    assert len(published(gateway)) == 1

    # A new look: stale, and a rebuild is queued at once (so it shows as building).
    changed = await gateway.client.patch(
        path, json={"attributes": {"hairColour": "black"}}, headers=gateway.auth(user)
    )
    assert changed.status_code == 200
    reference = changed.json()["referenceSet"]
    assert reference["status"] == "building"
    assert reference["jobId"] != first_job
    rebuild = published(gateway)[-1]
    assert rebuild.kind is JobKind.REFERENCE
    assert rebuild.character.attributes.hair_colour == "black"
    spec = await characters.spec_for(gateway.state.pool, user, created["id"])
    assert spec is not None and spec.reference_keys == []  # the old set no longer fits
    job = await gateway.client.get(
        f"/api/generate/{reference['jobId']}", headers=gateway.auth(user)
    )
    assert job.status_code == 200
    assert job.json()["kind"] == "reference"


async def test_reference_set_of_someone_else_is_404(gateway: Gateway, user: str) -> None:
    created = await gateway.create_character(user)
    response = await gateway.client.post(
        f"/api/v1/characters/{created['id']}/reference-set", headers=gateway.auth("other" + user)
    )
    assert response.status_code == 404
    assert published(gateway) == []


async def test_text_postgres_cannot_store_is_a_422_not_a_500(gateway: Gateway, user: str) -> None:
    cases = [
        ({"name": "Mi\u0000a"}, ["body", "name"]),
        ({"name": "Mia", "attributes": {"outfit": "\u0000"}}, ["body", "attributes", "outfit"]),
        ({"name": "Mia", "styleModifiers": ["ok", "b\u0000d"]}, ["body", "styleModifiers"]),
    ]
    for body, loc in cases:
        response = await gateway.client.post(
            "/api/v1/characters", json=body, headers=gateway.auth(user)
        )
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"][: len(loc)] == loc
    response = await gateway.client.post(
        "/api/v1/characters",
        content=b'{"name": "\\ud800"}',
        headers={**gateway.auth(user), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
