"""Queue status (AC-4) in the API and on the job's stream; the user-wide stream is live
(issue 18, bug 6)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator
from typing import cast

from schemas.events import GenerationQueued
from schemas.requests import UserTier
from services.gateway.auth import Principal
from services.gateway.estimates import recent_image_seconds
from services.gateway.routes.streams import QUEUE_EVENT, follow, user_events
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway


def _queued(job: str, user: str, index: int, count: int, tier: str) -> GenerationQueued:
    event = ev.queued(job, user, index, count)
    return event.model_copy(update={"data": event.data.model_copy(update={"tier": tier})})


async def _queue(gateway: Gateway, user: str, job: str) -> dict[str, object] | None:
    response = await gateway.client.get(f"/api/v1/jobs/{job}", headers=gateway.auth(user))
    assert response.status_code == 200, response.text
    queue: dict[str, object] | None = response.json()["queue"]
    return queue


async def test_a_waiting_job_shows_its_place_in_its_tiers_queue(
    gateway: Gateway, user: str
) -> None:
    tier = f"tier-{uuid.uuid4().hex[:6]}"  # a queue of this test's own
    first, second = await gateway.generate(user, 2), await gateway.generate(user, 1)
    assert await _queue(gateway, user, first) is None  # not dispatched yet
    # One feed per job: jobs are keyed to partitions, and the order across them is free.
    await gateway.feed(_queued(first, user, 0, 2, tier), _queued(first, user, 1, 2, tier))
    await gateway.feed(_queued(second, user, 0, 1, tier))
    one, two = await _queue(gateway, user, first), await _queue(gateway, user, second)
    assert one is not None and two is not None
    assert (one["tier"], one["position"], one["imagesAhead"]) == (tier, 1, 0)
    assert (two["position"], two["imagesAhead"]) == (3, 2)
    assert int(str(two["estimatedWaitSeconds"])) > 0 and two["estimatedStartTime"]
    listed = await gateway.client.get("/api/v1/jobs", headers=gateway.auth(user))
    by_id = {j["jobId"]: j for j in listed.json()["items"]}
    assert by_id[second]["queue"]["position"] == 3

    await gateway.feed(ev.started(first, user, 0), ev.started(first, user, 1))
    moved = await _queue(gateway, user, second)
    assert moved is not None and moved["position"] == 1
    assert await _queue(gateway, user, first) is None  # running: no longer waiting

    # The job's stream says so too, as an id-less queue_status message.
    stream = follow(gateway.state, user, second, 10**9, queue=True)
    try:
        message = await asyncio.wait_for(anext(stream), 3)
    finally:
        await stream.aclose()
    assert message.event == QUEUE_EVENT and message.id is None
    assert json.loads(str(message.data))["queue"]["position"] == 1


async def test_user_stream_without_last_event_id_is_live(gateway: Gateway, user: str) -> None:
    old = await gateway.generate(user, 1)
    await gateway.feed(ev.queued(old, user, 0, 1), ev.started(old, user, 0))
    response = await user_events(Principal(user, UserTier.PAID), gateway.state, None)
    stream = cast(AsyncGenerator[object, None], response.body_iterator)
    try:
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "history was replayed"
        new = await gateway.generate(user, 1)
        await gateway.feed(ev.queued(new, user, 0, 1))
        first = await asyncio.wait_for(waiting, 3)
    finally:
        await stream.aclose()
    assert new in str(getattr(first, "data", first))


async def test_the_wait_divides_by_the_images_the_tier_runs_at_once(
    gateway: Gateway, user: str
) -> None:
    tier = f"tier-{uuid.uuid4().hex[:6]}"
    busy, waiting = await gateway.generate(user, 6), await gateway.generate(user, 1)
    await gateway.feed(*(_queued(busy, user, i, 6, tier) for i in range(6)))
    await gateway.feed(_queued(waiting, user, 0, 1, tier))
    per_image = await recent_image_seconds(gateway.state.pool)
    alone = await _queue(gateway, user, waiting)
    assert alone is not None and alone["imagesAhead"] == 6
    assert alone["estimatedWaitSeconds"] == round(6 * per_image)  # nothing runs: one at a time
    # Two generators take an image each: four wait ahead, served two at a time.
    await gateway.feed(ev.started(busy, user, 0), ev.started(busy, user, 1))
    shared = await _queue(gateway, user, waiting)
    assert shared is not None and shared["imagesAhead"] == 4
    assert shared["estimatedWaitSeconds"] == round(4 * per_image / 2)
