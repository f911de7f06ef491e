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
