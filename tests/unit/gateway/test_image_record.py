"""An image's API record says how it was made: prompts, the scene and who wrote it, and
its quality score, as storage's image_stored event reported them."""

from __future__ import annotations

from typing import Any

from schemas.events import JobStatus
from schemas.images import CharacterScore
from tests.unit.gateway import image_events as ev
from tests.unit.gateway.conftest import Gateway

DERIVED = "Mia climbs the lighthouse stairs at night, holding a lantern"


async def _scene_for_page_without_description(gateway: Gateway, user: str) -> dict[str, Any]:
    cast = [str((await gateway.create_character(user))["id"])]
    response = await gateway.client.post(
        "/api/v1/stories",
        json={
            "title": "Mia and the Lighthouse",
            "characterIds": cast,
            "pages": [{"pageNumber": 1, "text": "She climbs the stairs with her lantern."}],
        },
        headers=gateway.auth(user),
    )
    assert response.status_code == 201, response.text
    story = response.json()["id"]
    response = await gateway.client.post(
        "/api/v1/images/scenes",
        json={"storyId": story, "pageNumber": 1, "characterIds": cast, "style": "storybook"},
        headers=gateway.auth(user),
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    body.update(storyId=story, characterId=cast[0])
    return body


async def test_a_derived_scene_and_the_quality_score_show_in_the_record(
    gateway: Gateway, user: str
) -> None:
    scene = await _scene_for_page_without_description(gateway, user)
    job, image, story = scene["jobId"], scene["imageId"], scene["storyId"]
    common = {"kind": "scene", "character": scene["characterId"], "story": story, "page": 1}
    await gateway.feed(ev.queued(job, user, image, **common), ev.started(job, user, image))

    pending = await gateway.client.get(f"/api/v1/images/{image}", headers=gateway.auth(user))
    assert pending.status_code == 200, pending.text
    before = pending.json()
    assert (before["sceneDescription"], before["sceneSource"], before["qualityScore"]) == (
        "",
        "",
        None,
    )

    await gateway.feed(
        ev.stored(
            job,
            user,
            image,
            **common,
            prompt=f"storybook illustration, {DERIVED}",
            negative_prompt="blurry, extra fingers",
            scene=DERIVED,
            scene_source="extractor",
            quality=0.4211,
        ),
        ev.finished(job, user, 1, 1, JobStatus.COMPLETED, cost=0.02),
    )
    response = await gateway.client.get(f"/api/v1/images/{image}", headers=gateway.auth(user))
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "completed"
    assert record["prompt"] == f"storybook illustration, {DERIVED}"
    assert record["negativePrompt"] == "blurry, extra fingers"
    assert record["sceneDescription"] == DERIVED
    assert record["sceneSource"] == "extractor"
    assert record["qualityScore"] == 0.4211
    assert record["versions"][0]["sceneSource"] == "extractor"

    listed = await gateway.client.get(
        "/api/v1/images", params={"storyId": story}, headers=gateway.auth(user)
    )
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["items"]
    assert (item["id"], item["sceneDescription"], item["qualityScore"]) == (image, DERIVED, 0.4211)

    other = await gateway.client.get(
        f"/api/v1/images/{image}", headers=gateway.auth(user + "-other")
    )
    assert other.status_code == 404


async def test_an_unknown_scene_source_reads_as_none(gateway: Gateway, user: str) -> None:
    scene = await _scene_for_page_without_description(gateway, user)
    job, image = scene["jobId"], scene["imageId"]
    await gateway.feed(
        ev.stored(job, user, image, kind="scene", scene="a cliff", scene_source="oracle"),
    )
    response = await gateway.client.get(f"/api/v1/images/{image}", headers=gateway.auth(user))
    assert response.status_code == 200, response.text
    record = response.json()
    assert (record["sceneDescription"], record["sceneSource"]) == ("a cliff", "")


async def test_per_character_scores_and_not_scored_show_in_the_image_and_the_job(
    gateway: Gateway, user: str
) -> None:
    scene = await _scene_for_page_without_description(gateway, user)
    job, image, story = scene["jobId"], scene["imageId"], scene["storyId"]
    common = {"kind": "scene", "character": scene["characterId"], "story": story, "page": 1}
    await gateway.feed(ev.queued(job, user, image, **common), ev.started(job, user, image))
    stored = ev.stored(job, user, image, **common, score=0.31)
    scores = {
        "mia": CharacterScore(score=0.82, status="recognised"),
        "grandma": CharacterScore(score=0.31, status="drifted"),
    }
    await gateway.feed(
        stored.model_copy(
            update={"data": stored.data.model_copy(update={"character_scores": scores})}
        ),
        ev.finished(job, user, 1, 1, JobStatus.COMPLETED, cost=0.02),
    )
    record = (
        await gateway.client.get(f"/api/v1/images/{image}", headers=gateway.auth(user))
    ).json()
    assert record["consistencyScore"] == 0.31 and record["notScoredReason"] is None
    assert record["characterScores"] == {
        "mia": {"score": 0.82, "status": "recognised", "reason": ""},
        "grandma": {"score": 0.31, "status": "drifted", "reason": ""},
    }
    detail = (await gateway.client.get(f"/api/v1/jobs/{job}", headers=gateway.auth(user))).json()
    assert detail["notScored"] == 0

    # A page where no face could be found: the image and its job say so, with the reason.
    other = await _scene_for_page_without_description(gateway, user)
    job, image = other["jobId"], other["imageId"]
    common = {
        "kind": "scene",
        "character": other["characterId"],
        "story": other["storyId"],
        "page": 1,
    }
    await gateway.feed(ev.queued(job, user, image, **common), ev.started(job, user, image))
    unscored = ev.stored(job, user, image, **common, score=None)
    reason = "no face found in the image"
    data = unscored.data.model_copy(
        update={
            "not_scored_reason": reason,
            "character_scores": {
                other["characterId"]: CharacterScore(status="not_scored", reason=reason)
            },
        }
    )
    await gateway.feed(
        unscored.model_copy(update={"data": data}),
        ev.finished(job, user, 1, 1, JobStatus.COMPLETED, cost=0.02),
    )
    record = (
        await gateway.client.get(f"/api/v1/images/{image}", headers=gateway.auth(user))
    ).json()
    assert record["consistencyScore"] is None and record["notScoredReason"] == reason
    assert record["characterScores"][other["characterId"]]["status"] == "not_scored"
    detail = (await gateway.client.get(f"/api/v1/jobs/{job}", headers=gateway.auth(user))).json()
    assert detail["notScored"] == 1
    assert detail["images"][0]["notScoredReason"] == reason
