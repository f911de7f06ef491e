from __future__ import annotations

from decimal import Decimal
from typing import Any

from schemas.events import JobStatus
from schemas.requests import REQUEST_ADAPTER, CancelJob
from tests.unit.gateway import factories as pack_ev
from tests.unit.gateway import image_events as ev
from tests.unit.gateway.conftest import Gateway


async def _job(gateway: Gateway, user: str, job_id: str) -> dict[str, Any]:
    response = await gateway.client.get(f"/api/v1/jobs/{job_id}", headers=gateway.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_job_status_shows_counts_progress_reason_and_cost(
    gateway: Gateway, user: str
) -> None:
    job = await gateway.generate(user, 3)
    ids = [pack_ev.image_id(job, i) for i in range(3)]
    await gateway.feed(
        *(ev.queued(job, user, iid, index=i, count=3) for i, iid in enumerate(ids)),
        ev.progress(job, user, total=3, done=0, running=2, phase="images"),
    )
    body = await _job(gateway, user, job)
    assert (body["kind"], body["status"], body["running"], body["phase"]) == (
        "pack",
        "running",
        2,
        "images",
    )
    assert [i["status"] for i in body["images"]] == ["queued"] * 3
    await gateway.feed(
        ev.stored(job, user, ids[0], cost=0.013),
        ev.failed(job, user, ids[1], final=False),
        ev.failed(job, user, ids[1], final=True, attempt=3),
        ev.finished(
            job,
            user,
            3,
            1,
            JobStatus.PARTIALLY_COMPLETED,
            cost=0.013,
            reason_code="user_budget_exceeded",
            reason="daily limit of $1.00 reached",
        ),
    )
    body = await _job(gateway, user, job)
    assert (body["status"], body["completed"], body["failed"], body["progress"]) == (
        "partially_completed",
        1,
        1,
        1.0,
    )
    assert (body["reasonCode"], body["reason"]) == (
        "user_budget_exceeded",
        "daily limit of $1.00 reached",
    )
    assert Decimal(body["costUsd"]) == Decimal("0.013")
    assert body["running"] == 0
    # The image that never started is not coming now; the failed one says so.
    assert [i["status"] for i in body["images"]] == ["completed", "failed", "failed"]


async def test_only_final_failures_mark_an_image_failed(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    iid = pack_ev.image_id(job, 0)
    await gateway.feed(ev.queued(job, user, iid), ev.failed(job, user, iid, final=False))
    body = await _job(gateway, user, job)
    assert (body["failed"], body["images"][0]["status"]) == (0, "queued")


async def test_consistency_flags_are_projected(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    iid = pack_ev.image_id(job, 0)
    await gateway.feed(
        ev.queued(job, user, iid),
        ev.flagged(job, user, iid, variation=0, final=False),
        ev.stored(job, user, iid, score=0.5, flagged=True),
    )
    [image] = (await _job(gateway, user, job))["images"]
    assert (image["flagged"], image["consistencyScore"]) == (True, 0.5)


async def test_job_list_filters_and_pages(gateway: Gateway, user: str) -> None:
    jobs = [await gateway.generate(user, 1) for _ in range(3)]
    await gateway.feed(ev.finished(jobs[0], user, 1, 1, JobStatus.COMPLETED))
    auth = gateway.auth(user)
    first = (await gateway.client.get("/api/v1/jobs", params={"limit": 2}, headers=auth)).json()
    assert [j["jobId"] for j in first["items"]] == [jobs[2], jobs[1]]
    rest = await gateway.client.get(
        "/api/v1/jobs", params={"limit": 2, "cursor": first["nextCursor"]}, headers=auth
    )
    assert [j["jobId"] for j in rest.json()["items"]] == [jobs[0]]
    assert rest.json()["nextCursor"] is None
    done = await gateway.client.get("/api/v1/jobs", params={"status": "completed"}, headers=auth)
    assert [j["jobId"] for j in done.json()["items"]] == [jobs[0]]
    mine = await gateway.client.get("/api/v1/jobs", headers=gateway.auth("stranger"))
    assert mine.json()["items"] == []
    bad = await gateway.client.get("/api/v1/jobs", params={"status": "sleepy"}, headers=auth)
    assert bad.status_code == 422


async def test_cancel_publishes_and_refuses_finished_or_foreign_jobs(
    gateway: Gateway, user: str
) -> None:
    job = await gateway.generate(user, 2)
    auth = gateway.auth(user)
    response = await gateway.client.post(f"/api/generate/{job}/cancel", headers=auth)
    assert response.status_code == 202
    assert response.json()["cancelled"] is True
    command = REQUEST_ADAPTER.validate_json(
        gateway.broker.records(gateway.topics.requests)[-1].value
    )
    assert isinstance(command, CancelJob)
    assert (command.job_id, command.user_id) == (job, user)

    foreign = await gateway.client.post(
        f"/api/v1/jobs/{job}/cancel", headers=gateway.auth("intruder")
    )
    assert foreign.status_code == 404
    await gateway.feed(pack_ev.cancelled(job, user))
    again = await gateway.client.post(f"/api/v1/jobs/{job}/cancel", headers=auth)
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]
    assert len(gateway.broker.records(gateway.topics.requests)) == 2  # generate + one cancel
    missing = await gateway.client.post("/api/generate/no-such-job/cancel", headers=auth)
    assert missing.status_code == 404


async def test_foreign_or_unknown_job_is_404(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 1)
    for path in (f"/api/v1/jobs/{job}", "/api/v1/jobs/nope"):
        response = await gateway.client.get(path, headers=gateway.auth("intruder"))
        assert response.status_code == 404


async def test_estimate_uses_recent_durations_and_queued_work(gateway: Gateway, user: str) -> None:
    from services.gateway import estimates

    other = f"{user}-timer"
    job = await gateway.generate(other, 1)
    await gateway.feed(
        *(ev.completed(job, other, f"{job}-{i}", 4000) for i in range(3)),
    )
    await gateway.generate(user, 3)  # 3 images outstanding for `user`
    estimate = await estimates.estimate(gateway.state.pool, user, 2)
    assert estimate.images_ahead == 3
    # The median of recent durations across users plus the pipeline allowance.
    assert estimate.per_image_s == 4.0 + estimates.PIPELINE_OVERHEAD_S
    assert estimate.seconds == (3 + 2) * estimate.per_image_s
