"""A portrait job that builds the reference set moves the set's status (issue 18, bug 5)."""

from __future__ import annotations

from schemas.events import JobStatus
from schemas.jobs import image_id_for
from tests.unit.gateway import image_events as ev
from tests.unit.gateway.conftest import Gateway


async def _reference_set(gateway: Gateway, user: str, character: str) -> dict[str, object]:
    response = await gateway.client.get(
        f"/api/v1/characters/{character}", headers=gateway.auth(user)
    )
    assert response.status_code == 200, response.text
    found: dict[str, object] = response.json()["referenceSet"]
    return found


async def test_a_portrait_that_made_the_reference_images_makes_the_set_ready(
    gateway: Gateway, user: str
) -> None:
    made = await gateway.create_character(user)
    character = str(made["id"])
    assert (await _reference_set(gateway, user, character))["status"] == "none"
    response = await gateway.client.post(
        "/api/v1/images/characters",
        json={"characterId": character, "style": "storybook"},
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    job = response.json()["jobId"]
    building = await _reference_set(gateway, user, character)
    assert (building["status"], building["jobId"]) == ("building", job)

    # The scheduler's plan: the portrait (index 0), then five reference images.
    images = [image_id_for(job, i) for i in range(6)]
    events = [
        ev.queued(job, user, images[0], kind="portrait", character=character, count=6),
        *(
            ev.queued(job, user, images[i], index=i, kind="reference", character=character,
                      count=6)
            for i in range(1, 6)
        ),
        *(
            ev.stored(job, user, images[i], index=i, kind="reference", character=character)
            for i in range(1, 6)
        ),
        ev.stored(job, user, images[0], kind="portrait", character=character),
        ev.finished(job, user, 6, 6, JobStatus.COMPLETED),
    ]  # fmt: skip
    await gateway.feed(*events)
    ready = await _reference_set(gateway, user, character)
    assert (ready["status"], ready["imageCount"], ready["jobId"]) == ("ready", 5, job)
