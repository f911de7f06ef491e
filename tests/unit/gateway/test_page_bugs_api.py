"""What the page's fixes for issue 18's bugs 2 and 3 rest on, checked at the API.

Bug 2 (a reload lost running jobs): the job list says which jobs still run (status, no
finishedAt, progress, running count) and which ended, with counts the page draws from.
Bug 3 (cancelled images filled the gallery): `?status=completed` lists stored images only,
and an unfiltered list marks a cancelled image `cancelled` with no URL to show.
"""

from __future__ import annotations

from typing import Any

from schemas.events import JobStatus
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway


async def _jobs(gateway: Gateway, user: str) -> dict[str, dict[str, Any]]:
    listed = await gateway.client.get("/api/v1/jobs", headers=gateway.auth(user))
    assert listed.status_code == 200, listed.text
    return {job["jobId"]: job for job in listed.json()["items"]}


async def test_job_list_tells_running_jobs_from_ended_ones(gateway: Gateway, user: str) -> None:
    running, ended = await gateway.generate(user, 3), await gateway.generate(user, 1)
    await gateway.feed(*(ev.queued(running, user, i, 3) for i in range(3)))
    await gateway.feed(ev.started(running, user, 0), ev.stored(running, user, 0))
    await gateway.feed(*ev.pack(ended, user, 1))

    jobs = await _jobs(gateway, user)
    now = jobs[running]
    assert (now["status"], now["finishedAt"]) == ("running", None)
    assert (now["total"], now["completed"], now["failed"]) == (3, 1, 0)
    assert 0 < now["progress"] < 1
    done = jobs[ended]
    assert done["status"] == "completed" and done["finishedAt"] is not None
    assert (done["total"], done["completed"]) == (1, 1)

    # A job being cancelled keeps finishedAt null until its running images report.
    await gateway.feed(ev.started(running, user, 1), ev.cancelled(running, user))
    assert (await _jobs(gateway, user))[running]["finishedAt"] is None
    await gateway.feed(ev.stored(running, user, 1))
    await gateway.feed(ev.pack_completed(running, user, 3, 2, 0, JobStatus.CANCELLED))
    closed = (await _jobs(gateway, user))[running]
    assert closed["status"] == "cancelled" and closed["finishedAt"] is not None
    assert closed["completed"] == 2


async def test_cancelled_images_are_not_gallery_images(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 3)
    await gateway.feed(*(ev.queued(job, user, i, 3) for i in range(3)))
    await gateway.feed(ev.started(job, user, 0), ev.stored(job, user, 0))
    await gateway.feed(ev.cancelled(job, user))
    await gateway.feed(ev.pack_completed(job, user, 3, 1, 0, JobStatus.CANCELLED))
    auth = gateway.auth(user)

    shown = await gateway.client.get("/api/v1/images", params={"status": "completed"}, headers=auth)
    assert [i["id"] for i in shown.json()["images"]] == [ev.image_id(job, 0)]
    assert all(i["url"] for i in shown.json()["images"])

    everything = await gateway.client.get("/api/v1/images", headers=auth)
    by_id = {i["id"]: i for i in everything.json()["images"]}
    for index in (1, 2):
        image = by_id[ev.image_id(job, index)]
        assert image["status"] == "cancelled"
        assert image["url"] is None and image["thumbnailUrl"] is None
