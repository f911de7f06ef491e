from __future__ import annotations

import uuid

import pytest

from schemas.events import Event, JobStatus, PackCompleted
from services.gateway.folding import fold_job, next_status
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway


async def _job(gateway: Gateway, user: str, job_id: str) -> dict[str, object]:
    response = await gateway.client.get(f"/api/generate/{job_id}", headers=gateway.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_progress_then_completion_with_signed_urls(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 3)
    await gateway.feed(*(ev.queued(job, user, i, 3) for i in range(3)))
    assert (await _job(gateway, user, job))["status"] == "queued"

    await gateway.feed(
        ev.started(job, user, 0), ev.progress(job, user, 0, 2), ev.stored(job, user, 0)
    )
    body = await _job(gateway, user, job)
    assert body["status"] == "running"
    assert (body["completed"], body["failed"], body["total"]) == (1, 0, 3)
    assert body["progress"] == pytest.approx(1 / 3)

    await gateway.feed(
        ev.started(job, user, 1),
        ev.stored(job, user, 1),
        ev.started(job, user, 2),
        ev.stored(job, user, 2, demo=False),
        ev.pack_completed(job, user, 3, 3, 0, JobStatus.COMPLETED),
    )
    body = await _job(gateway, user, job)
    assert body["status"] == "completed"
    assert body["progress"] == 1.0
    assert body["finished_at"] is not None
    images = body["images"]
    assert isinstance(images, list)
    assert [i["index"] for i in images] == [0, 1, 2]
    first = images[0]
    assert first["url"] == f"memory://images/{user}/{job}/0/display.png?expires_in=3600"
    assert first["thumbnailUrl"] == f"memory://images/{user}/{job}/0/thumbnail.png?expires_in=3600"
    assert (first["width"], first["height"], first["sizeBytes"]) == (512, 512, 5120)
    assert (first["seed"], first["model"], first["demo"]) == (1234, "dcgan-digiface", True)
    assert images[2]["demo"] is False


async def test_duplicate_events_are_ignored(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    stored = ev.stored(job, user, 0)
    failure = ev.failed(job, user, 1, final=True)
    await gateway.feed(stored, stored, failure, failure)
    body = await _job(gateway, user, job)
    assert (body["completed"], body["failed"]) == (1, 1)
    assert body["progress"] == 1.0
    async with gateway.state.pool.acquire() as conn:
        logged = await conn.fetch("SELECT seq FROM events WHERE job_id = $1 ORDER BY id", job)
    assert [r["seq"] for r in logged] == [1, 2]


async def test_only_final_failures_count(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(
        ev.failed(job, user, 0, final=False, attempt=1),
        ev.stored(job, user, 0),
        ev.failed(job, user, 1, final=True, attempt=3),
        ev.pack_completed(job, user, 2, 1, 1, JobStatus.PARTIALLY_COMPLETED),
    )
    body = await _job(gateway, user, job)
    assert (body["status"], body["completed"], body["failed"]) == ("partially_completed", 1, 1)


async def test_events_for_an_unknown_job_create_it(gateway: Gateway, user: str) -> None:
    job = str(uuid.uuid4())
    await gateway.feed(
        ev.queued(job, user, 0, 2), ev.queued(job, user, 1, 2), ev.started(job, user, 0)
    )
    body = await _job(gateway, user, job)
    assert (body["status"], body["total"], body["kind"]) == ("running", 2, "pack")
    async with gateway.state.pool.acquire() as conn:
        seqs = await conn.fetch("SELECT seq FROM events WHERE job_id = $1 ORDER BY id", job)
        owners = await conn.fetch("SELECT user_id, status FROM images WHERE job_id = $1", job)
    assert [r["seq"] for r in seqs] == [1, 2, 3]
    assert sorted((r["user_id"], r["status"]) for r in owners) == [
        (user, "generating"),
        (user, "queued"),
    ]
    # An event without a user for a job nobody owns is logged but shown to no one.
    await gateway.feed(ev.stored(str(uuid.uuid4()), None, 0))


async def test_cancelled_is_terminal_and_sticky(gateway: Gateway, user: str) -> None:
    job = await gateway.generate(user, 2)
    await gateway.feed(
        ev.started(job, user, 0),
        ev.cancelled(job, user),
        ev.pack_completed(job, user, 2, 0, 0, JobStatus.FAILED),
    )
    body = await _job(gateway, user, job)
    assert (body["status"], body["progress"]) == ("cancelled", 1.0)


async def test_poison_event_is_dead_lettered(gateway: Gateway) -> None:
    publisher = gateway.broker.publisher()
    await publisher.publish(gateway.topics.events, "k", b'{"type": "nonsense"}')
    loop = gateway.state.consumer_loop
    for _ in range(500):
        if loop.dead_lettered:
            break
        await gateway.broker.wait_for_change(0.01)
    assert len(gateway.broker.records(gateway.topics.dead_letter)) == 1


def test_status_moves_forward_only() -> None:
    job, user = "j", "u"
    assert next_status(JobStatus.ACCEPTED, ev.queued(job, user, 0, 1)) is JobStatus.QUEUED
    assert next_status(JobStatus.QUEUED, ev.started(job, user, 0)) is JobStatus.RUNNING
    assert next_status(JobStatus.RUNNING, ev.queued(job, user, 1, 2)) is JobStatus.RUNNING
    done = ev.pack_completed(job, user, 1, 1, 0, JobStatus.COMPLETED)
    assert next_status(JobStatus.RUNNING, done) is JobStatus.COMPLETED
    assert next_status(JobStatus.COMPLETED, ev.started(job, user, 0)) is JobStatus.COMPLETED
    assert next_status(JobStatus.RUNNING, ev.cancelled(job, user)) is JobStatus.CANCELLED
    assert next_status(JobStatus.CANCELLED, done) is JobStatus.CANCELLED
    assert next_status(JobStatus.QUEUED, ev.failed(job, user, 0, final=True)) is JobStatus.QUEUED


async def test_a_batch_holding_a_logged_event_is_applied_again_without_it(
    gateway: Gateway, user: str
) -> None:
    """The projection applies a batch without a duplicate check first; an event already in
    the log rolls the batch back, and it is applied again with the check."""
    job = await gateway.generate(user, 3)
    first = ev.stored(job, user, 0)
    await gateway.feed(first)
    await gateway.feed(first, ev.stored(job, user, 1), first, ev.failed(job, user, 2, final=True))
    body = await _job(gateway, user, job)
    assert (body["completed"], body["failed"]) == (2, 1)
    async with gateway.state.pool.acquire() as conn:
        logged = await conn.fetch("SELECT seq FROM events WHERE job_id = $1 ORDER BY id", job)
    assert [r["seq"] for r in logged] == [1, 2, 3]


async def test_the_one_statement_fold_moves_the_status_as_next_status_says(
    gateway: Gateway, user: str
) -> None:
    """The job's seq and fold are one statement, the new status picked in SQL from
    `next_status`'s answer for every status the job may have: checked for each of them."""
    job = await gateway.generate(user, 2)
    events: list[Event] = [
        ev.queued(job, user, 0, 2),
        ev.started(job, user, 0),
        ev.stored(job, user, 0),
        ev.failed(job, user, 1, final=True),
        ev.cancelled(job, user),
        ev.pack_completed(job, user, 2, 1, 1, JobStatus.PARTIALLY_COMPLETED),
        ev.pack_completed(job, user, 2, 0, 0, JobStatus.CANCELLED),
    ]
    async with gateway.state.pool.acquire() as conn:
        seq = await conn.fetchval("SELECT last_seq FROM jobs WHERE id = $1", job)
        for status in JobStatus:
            for event in events:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    await conn.execute(
                        "UPDATE jobs SET status = $2, running = 3, finished_at = NULL"
                        " WHERE id = $1",
                        job,
                        status.value,
                    )
                    folded = await fold_job(conn, job, event)
                    row = await conn.fetchrow(
                        "SELECT status, running, finished_at IS NOT NULL AS finished"
                        " FROM jobs WHERE id = $1",
                        job,
                    )
                finally:
                    await transaction.rollback()
                expected = next_status(status, event)
                ends = expected.terminal and (
                    expected is not JobStatus.CANCELLED or isinstance(event, PackCompleted)
                )
                assert folded is not None and folded.status is expected, (status, event.type)
                assert folded.seq == seq + 1 and folded.user_id == user
                assert row["status"] == expected.value
                assert row["finished"] is ends and (row["running"] == 0) is ends
