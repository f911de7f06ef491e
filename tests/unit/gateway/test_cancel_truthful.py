"""A cancelled job as the gateway shows it: images running at the cancel finish and count,
and the closing pack_completed is the job's last word; its counts and cost equal the
job's record (issue 18, bug 1)."""

from __future__ import annotations

import asyncio

from schemas.events import JobStatus
from services.gateway.routes.streams import follow
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway


async def test_images_running_at_a_cancel_are_counted_before_the_end(
    gateway: Gateway, user: str
) -> None:
    job = await gateway.generate(user, 3)
    await gateway.feed(*(ev.queued(job, user, i, 3) for i in range(3)))
    await gateway.feed(ev.started(job, user, 0), ev.started(job, user, 1))
    await gateway.feed(ev.cancelled(job, user))
    auth = gateway.auth(user)
    mid = (await gateway.client.get(f"/api/v1/jobs/{job}", headers=auth)).json()
    assert mid["status"] == "cancelled" and mid["finishedAt"] is None
    by_index = {i["id"]: i["status"] for i in mid["images"]}
    assert by_index[ev.image_id(job, 2)] == "cancelled"  # never started
    assert by_index[ev.image_id(job, 0)] == "generating"  # still running: it will report

    stream = follow(gateway.state, user, job, 0)
    try:
        seen = [(await asyncio.wait_for(anext(stream), 5)).event for _ in range(6)]
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.05)
        assert not waiting.done(), "the stream ended before the job's closing event"
        await gateway.feed(ev.stored(job, user, 0))
        closing = ev.pack_completed(job, user, 3, 1, 0, JobStatus.CANCELLED)
        data = closing.data.model_copy(update={"cost_usd": 0.5, "reason_code": "cancelled_by_user"})
        await gateway.feed(closing.model_copy(update={"data": data}))
        seen += [(await asyncio.wait_for(waiting, 5)).event]
        seen += [(await asyncio.wait_for(anext(stream), 5)).event]
    finally:
        await stream.aclose()
    assert seen[-3:] == ["job_cancelled", "image_stored", "pack_completed"]

    final = (await gateway.client.get(f"/api/v1/jobs/{job}", headers=auth)).json()
    assert (final["status"], final["completed"], final["failed"]) == ("cancelled", 1, 0)
    assert float(final["costUsd"]) == 0.5
    assert final["reasonCode"] == "cancelled_by_user" and final["finishedAt"] is not None
    statuses = sorted(i["status"] for i in final["images"])
    assert statuses == ["cancelled", "cancelled", "completed"]
