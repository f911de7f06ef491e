"""Deleting a character or a story asks storage to delete its images (requests topic)."""

from __future__ import annotations

from schemas.requests import REQUEST_ADAPTER, DeleteCharacter, DeleteStory
from tests.unit.gateway.conftest import Gateway


def _commands(gateway: Gateway) -> list[object]:
    return [
        REQUEST_ADAPTER.validate_json(r.value)
        for r in gateway.broker.records(gateway.topics.requests)
    ]


async def test_deleting_a_character_publishes_delete_character(gateway: Gateway, user: str) -> None:
    created = await gateway.create_character(user)
    path = f"/api/v1/characters/{created['id']}"
    assert (await gateway.client.delete(path, headers=gateway.auth(user))).status_code == 204
    assert (await gateway.client.delete(path, headers=gateway.auth(user))).status_code == 404
    deletes = [c for c in _commands(gateway) if isinstance(c, DeleteCharacter)]
    assert [(c.character_id, c.user_id) for c in deletes] == [(created["id"], user)]


async def test_deleting_a_story_publishes_delete_story(gateway: Gateway, user: str) -> None:
    character = await gateway.create_character(user)
    body = {"title": "T", "characterIds": [character["id"]], "pages": [{"pageNumber": 1}]}
    story = (
        await gateway.client.post("/api/v1/stories", json=body, headers=gateway.auth(user))
    ).json()
    path = f"/api/v1/stories/{story['id']}"
    intruder = gateway.auth("someone-else")
    assert (await gateway.client.delete(path, headers=intruder)).status_code == 404
    assert (await gateway.client.delete(path, headers=gateway.auth(user))).status_code == 204
    deletes = [c for c in _commands(gateway) if isinstance(c, DeleteStory)]
    assert [(c.story_id, c.user_id) for c in deletes] == [(story["id"], user)]
