"""Cancelling a running pack: in-flight images finish and are counted, then the job's one
terminal event, with counts and cost equal to its final record (issue 18, bug 1)."""

from __future__ import annotations

from decimal import Decimal

from schemas.events import JobStatus
from schemas.requests import REQUEST_ADAPTER, CancelJob, DiscardImage
from tests.unit.scheduler.fakes import failed, fast_settings
from tests.unit.scheduler.memrig import memory_rig, pack


async def test_cancel_counts_in_flight_images_before_the_terminal_event(
    database_url: str,
) -> None:
    settings = fast_settings(max_jobs_in_flight_paid=1)
    async with memory_rig(database_url, settings, lambda _job: "hold") as m:
        assert m.generator is not None
        generator = m.generator
        job = pack(6)
        await m.rig.submit(job, "alice")

        async def dispatched() -> bool:
            return len(generator.held) >= 2

        await m.rig.wait(dispatched, "two images in flight")
        in_flight = list(generator.held)
        await m.rig.submit(CancelJob(job_id=job.job_id, user_id="alice"), "alice")
        await m.rig.wait_event("job_cancelled", job.job_id)
        # Nothing new starts, and the job is not over while its images are running.
        sent = len(await m.rig.jobs())
        assert [e for e in await m.rig.events() if e.type == "pack_completed"] == []

        # One image got through (stored after the cancel), the others were stopped.
        await generator.answer(in_flight[0], "ok")
        for image in in_flight[1:]:
            await generator.emit(failed(image, retryable=False, error_type="Cancelled"))
        done = await m.rig.wait_event("pack_completed", job.job_id)

        events = [e for e in await m.rig.events() if e.job_id == job.job_id]
        assert events[-1].type == "pack_completed", [e.type for e in events]
        stored = [e for e in events if e.type == "image_stored"]
        assert done.data.status is JobStatus.CANCELLED
        assert done.data.reason_code == "cancelled_by_user"
        assert (done.data.completed_count, done.data.failed_count) == (len(stored), 0) == (1, 0)
        assert Decimal(str(done.data.cost_usd)) == generator.cost * len(stored)
        assert len(await m.rig.jobs()) == sent  # no retries, no new images
        async with m.rig.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, reason_code FROM jobs WHERE job_id = $1", job.job_id
            )
        assert (row["status"], row["reason_code"]) == ("cancelled", "cancelled_by_user")
        # Storage is told which dispatched images ended unstored: should an attempt of one
        # still arrive, it is not stored after the job's last word.
        discards = [
            r
            for r in (
                REQUEST_ADAPTER.validate_json(x.value)
                for x in await m.rig.records(m.rig.topics.requests)
            )
            if isinstance(r, DiscardImage)
        ]
        assert sorted((d.image_id, d.version, d.reason) for d in discards) == sorted(
            (i.image.image_id, i.image.version, "cancelled") for i in in_flight[1:]
        )
        assert {d.job_id for d in discards} == {job.job_id}


async def test_cancel_with_nothing_in_flight_ends_at_once(database_url: str) -> None:
    settings = fast_settings(max_jobs_in_flight_paid=1)
    async with memory_rig(database_url, settings, lambda _job: "hold") as m:
        assert m.generator is not None
        generator = m.generator
        first, second = pack(1), pack(3)
        await m.rig.submit(first, "alice")
        await m.rig.submit(second, "alice")  # waits for the user's only slot

        async def one_held() -> bool:
            return len(generator.held) == 1

        await m.rig.wait(one_held, "first job in flight")
        await m.rig.submit(CancelJob(job_id=second.job_id, user_id="alice"), "alice")
        done = await m.rig.wait_event("pack_completed", second.job_id)
        assert done.data.status is JobStatus.CANCELLED
        assert (done.data.completed_count, done.data.cost_usd) == (0, 0.0)
        assert done.data.reason_code == "cancelled_by_user"
