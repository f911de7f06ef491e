"""Scheduler flows over the in-memory broker with a real PostgreSQL and a scripted generator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Sized
from decimal import Decimal

from imagegen.kafka import Record
from imagegen.kafka.codec import encode
from schemas.characters import CharacterSpec
from schemas.events import JobStatus
from schemas.jobs import GenerateImage
from schemas.requests import (
    GenerateStory,
    RegenerateImage,
    StoryPage,
    StorySpec,
    UserTier,
)
from services.scheduler.day_totals import balance
from tests.unit.scheduler.fakes import catalogue_json, fast_settings
from tests.unit.scheduler.memrig import memory_rig, pack


async def test_user_cap_queues_excess_jobs_and_frees_the_slot_when_one_ends(
    database_url: str,
) -> None:
    held = True
    settings = fast_settings(max_jobs_in_flight_free=1, user_daily_limit_free_usd=Decimal("10"))
    async with memory_rig(database_url, settings, lambda _j: "hold" if held else "ok") as m:
        first, second = pack(2, tier=UserTier.FREE), pack(1, tier=UserTier.FREE)
        await m.rig.submit(first, "alice")
        await m.rig.submit(second, "alice")

        async def jobs_of(job_id: str) -> list[GenerateImage]:
            return [j for j in await m.rig.jobs() if j.image.job_id == job_id]

        await m.rig.wait(lambda: _len_is(jobs_of(first.job_id), 2), "first job dispatched")

        # The second job is admitted (budget reserved) but waits for the user's only slot.
        async def second_status() -> str | None:
            async with m.rig.pool.acquire() as conn:
                status: str | None = await conn.fetchval(
                    "SELECT status FROM jobs WHERE job_id = $1", second.job_id
                )
            return status

        await m.rig.wait(lambda: _is_not_none(second_status()), "second job admitted")
        assert await second_status() == "queued"
        await asyncio.sleep(0.3)
        assert await jobs_of(second.job_id) == []
        assert all(j.tier.value == "economy" for j in await m.rig.jobs())

        held = False
        assert m.generator is not None
        for job in list(m.generator.held):
            await m.generator.answer(job, "ok")
        done = await m.rig.wait_event("pack_completed", first.job_id)
        assert done.data.status is JobStatus.COMPLETED
        await m.rig.wait(lambda: _len_is(jobs_of(second.job_id), 1), "second job dispatched")
        done = await m.rig.wait_event("pack_completed", second.job_id)
        assert done.data.status is JobStatus.COMPLETED
        assert done.data.cost_usd == 0.5


async def _is_not_none(value: Awaitable[object]) -> bool:
    return await value is not None


async def _len_is(items: Awaitable[Sized], n: int) -> bool:
    return len(await items) == n


def story(pages: int, *, portraits: bool, images_per_page: int = 1) -> GenerateStory:
    hero = CharacterSpec(id="hero", name="Hero", seed=42)
    return GenerateStory(
        job_id=str(uuid.uuid4()),
        user_id="alice",
        tier=UserTier.PAID,
        story=StorySpec(
            id="story-1",
            title="A tale",
            pages=[StoryPage(page_number=n, text=f"page {n}") for n in range(1, pages + 1)],
            characters=[hero],
        ),
        include_character_portraits=portraits,
        images_per_page=images_per_page,
    )


async def test_story_keeps_at_most_the_cap_in_flight_and_scenes_wait_for_portraits(
    database_url: str,
) -> None:
    settings = fast_settings(story_max_in_flight=3)
    async with memory_rig(database_url, settings, lambda _j: "hold") as m:
        request = story(5, portraits=True)
        await m.rig.submit(request, "alice")
        await m.rig.wait(lambda: _len_is(m.rig.jobs(), 1), "portrait dispatched")
        await asyncio.sleep(0.3)
        (portrait,) = await m.rig.jobs()
        assert portrait.image.kind.value == "portrait" and portrait.tier.value == "standard"

        assert m.generator is not None
        await m.generator.answer(portrait, "ok")
        await m.rig.wait(lambda: _len_is(m.rig.jobs(), 4), "three scenes dispatched")
        await asyncio.sleep(0.3)
        scenes = (await m.rig.jobs())[1:]
        assert len(scenes) == 3, "the story cap is 3 images in flight"
        display = f"users/alice/images/{portrait.image.image_id}/v1/display"
        assert all(display in s.reference_keys for s in scenes)

        await m.generator.answer(scenes[0], "ok")
        await m.rig.wait(lambda: _len_is(m.rig.jobs(), 5), "a fourth scene after one settled")
        await asyncio.sleep(0.3)
        assert len(await m.rig.jobs()) == 5
        for job in (await m.rig.jobs())[2:]:
            await m.generator.answer(job, "ok")
        await m.rig.wait(lambda: _len_is(m.rig.jobs(), 6), "the last scene")
        await m.generator.answer((await m.rig.jobs())[-1], "ok")
        done = await m.rig.wait_event("pack_completed", request.job_id)
        assert done.data.status is JobStatus.COMPLETED and done.data.completed_count == 6
        progress = [e for e in await m.rig.events() if e.type == "job_progress"]
        assert sorted(p.data.completed for p in progress) == [1, 2, 3, 4, 5, 6]
        assert {p.data.phase for p in progress} == {"portraits", "scenes"}


async def test_regeneration_makes_new_versions_up_to_the_limit(database_url: str) -> None:
    async with memory_rig(database_url, fast_settings(), lambda _j: "ok") as m:
        original = pack(1)
        await m.rig.submit(original, "alice")
        await m.rig.wait_event("pack_completed", original.job_id)
        image_id = (await m.rig.jobs())[0].image.image_id

        def regen(version: int, user: str = "alice") -> RegenerateImage:
            return RegenerateImage(
                job_id=str(uuid.uuid4()),
                user_id=user,
                tier=UserTier.PAID,
                image_id=image_id,
                version=version,
            )

        for version in range(2, 7):
            request = regen(version)
            await m.rig.submit(request, "alice")
            done = await m.rig.wait_event("pack_completed", request.job_id)
            assert done.data.status is JobStatus.COMPLETED, done.data.reason
        versions = [j for j in await m.rig.jobs() if j.image.image_id == image_id]
        assert sorted(j.image.version for j in versions) == [1, 2, 3, 4, 5, 6]
        assert len({j.seed for j in versions}) == 6

        over = regen(6)
        await m.rig.submit(over, "alice")
        done = await m.rig.wait_event("pack_completed", over.job_id)
        assert (done.data.status, done.data.reason_code) == (JobStatus.FAILED, "regeneration_limit")

        stranger = regen(2, user="mallory")
        await m.rig.submit(stranger, "mallory")
        done = await m.rig.wait_event("pack_completed", stranger.job_id)
        assert done.data.reason_code == "image_not_found"
        assert len(await m.rig.jobs()) == 6, "refused regenerations dispatch nothing"


async def test_consistency_flags_requeue_new_seeds_until_the_last_variation(
    database_url: str,
) -> None:
    async with memory_rig(database_url, fast_settings(max_variations=2), lambda _j: "flag") as m:
        request = pack(1)
        await m.rig.submit(request, "alice")
        done = await m.rig.wait_event("pack_completed", request.job_id)
        assert done.data.status is JobStatus.COMPLETED
        jobs = await m.rig.jobs()
        assert [j.image.variation for j in jobs] == [0, 1, 2]
        assert len({j.seed for j in jobs}) == 3
        assert len({j.image.attempt for j in jobs}) == 3
        assert done.data.cost_usd == 1.5, "three draws were paid for"
        async with m.rig.pool.acquire() as conn:
            b = await balance(conn, m.rig.scheduler.ledger.today())
        assert (b["reserved_usd"], b["spent_usd"]) == (Decimal(0), Decimal("1.5"))


async def test_retries_back_off_then_fail_over_then_the_image_fails_alone(
    database_url: str,
) -> None:
    settings = fast_settings(
        catalogue=catalogue_json(("flaky", "1.00", "high"), ("steady", "2.00", "high")),
        retry_backoff_s=0.1,
    )

    def policy(job: GenerateImage) -> str:
        if job.image.image_index == 2:
            return "fail"  # every provider
        return "fail" if job.provider == "flaky" and job.image.image_index == 1 else "ok"

    async with memory_rig(database_url, settings, policy) as m:  # type: ignore[arg-type]
        request = pack(3)
        await m.rig.submit(request, "alice")
        done = await m.rig.wait_event("pack_completed", request.job_id)
        assert done.data.status is JobStatus.PARTIALLY_COMPLETED
        assert (done.data.completed_count, done.data.failed_count) == (2, 1)
        jobs = await m.rig.jobs()
        by_index = {
            i: [(j.image.attempt, j.provider) for j in jobs if j.image.image_index == i]
            for i in range(3)
        }
        assert by_index[0] == [(1, "flaky")]
        assert by_index[1] == [(1, "flaky"), (2, "flaky"), (3, "flaky"), (4, "steady")]
        assert by_index[2] == [
            (1, "flaky"),
            (2, "flaky"),
            (3, "flaky"),
            (4, "steady"),
            (5, "steady"),
            (6, "steady"),
        ]
        finals = [e for e in await m.rig.events() if e.type == "generation_failed" and e.data.final]
        assert [(f.data.image_index, f.data.attempt, f.source) for f in finals] == [
            (2, 6, "imagegen/scheduler")
        ]
        async with m.rig.pool.acquire() as conn:
            b = await balance(conn, m.rig.scheduler.ledger.today())
            hanging = await conn.fetchval(
                "SELECT count(*) FROM job_images WHERE status NOT IN ('stored', 'failed')"
            )
        assert hanging == 0
        assert b["reserved_usd"] == 0 and b["spent_usd"] == Decimal("1.0")
        assert b["ever_reserved"] == b["settled_reservations"] + b["released"]


async def test_an_attempt_gone_silent_is_retried_and_paid_for_once(database_url: str) -> None:
    """A started attempt that never completes, and a completed image that never gets stored
    (a message lost downstream), are retried after their deadlines; an image still waiting
    in its queue is not."""
    settings = fast_settings(attempt_run_deadline_s=0.3, attempt_store_deadline_s=0.3)

    def policy(job: GenerateImage) -> str:
        if job.image.job_id == waiting.job_id:
            return "hold"
        if job.image.attempt > 1:
            return "ok"
        return {0: "silent", 1: "image_lost"}.get(job.image.image_index, "ok")

    waiting = pack(1)
    async with memory_rig(database_url, settings, policy) as m:  # type: ignore[arg-type]
        request = pack(3)
        await m.rig.submit(waiting, "alice")
        await m.rig.submit(request, "alice")
        done = await m.rig.wait_event("pack_completed", request.job_id)
        assert done.data.status is JobStatus.COMPLETED and done.data.completed_count == 3
        jobs = await m.rig.jobs()
        attempts = {
            i: [
                j.image.attempt
                for j in jobs
                if j.image.job_id == request.job_id and j.image.image_index == i
            ]
            for i in range(3)
        }
        assert attempts == {0: [1, 2], 1: [1, 2], 2: [1]}
        overdue = [
            e
            for e in await m.rig.events()
            if e.type == "generation_failed" and e.data.error_type == "AttemptOverdue"
        ]
        assert sorted((e.data.image_index, e.data.attempt, e.data.final) for e in overdue) == [
            (0, 1, False),
            (1, 1, False),
        ]
        errors = {e.data.image_index: e.data.error for e in overdue}
        assert "no generation_completed within 0.3 s" in errors[0]
        assert "no image_stored within 0.3 s" in errors[1]
        assert {e.source for e in overdue} == {"imagegen/scheduler"}
        # The lost image's first draw was paid for; its retry is the same image: not again.
        assert done.data.cost_usd == 1.5
        async with m.rig.pool.acquire() as conn:
            b = await balance(conn, m.rig.scheduler.ledger.today())
            queued = await conn.fetchval(
                "SELECT status FROM job_images WHERE job_id = $1", waiting.job_id
            )
        assert b["spent_usd"] == Decimal("1.5") == b["entries_spent"]
        assert queued == "dispatched", "an image still in its queue has no deadline"
        assert [j.image.attempt for j in jobs if j.image.job_id == waiting.job_id] == [1]


async def test_backoff_delays_are_held_in_the_database(database_url: str) -> None:
    settings = fast_settings(retry_backoff_s=30.0)
    async with memory_rig(database_url, settings, lambda _j: "fail") as m:
        request = pack(1)
        await m.rig.submit(request, "alice")

        async def waiting() -> bool:
            async with m.rig.pool.acquire() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT due_at > now() + interval '20 seconds' FROM job_images"
                        " WHERE job_id = $1 AND status = 'retry_wait'",
                        request.job_id,
                    )
                )

        await m.rig.wait(waiting, "a retry due in about 30 s")
        assert len(await m.rig.jobs()) == 1, "nothing re-sent before it is due"


async def test_fifty_concurrent_admissions_never_overspend(database_url: str) -> None:
    # A budget for exactly 20 one-dollar images; 50 users ask at the same moment.
    settings = fast_settings(daily_budget_usd=Decimal("20"))
    async with memory_rig(database_url, settings, None) as m:
        requests = [pack(1, user=f"user-{n}") for n in range(50)]
        records = [
            Record(m.rig.topics.requests, 0, n, r.user_id, encode(r))
            for n, r in enumerate(requests)
        ]
        await asyncio.gather(*(m.rig.scheduler.on_request(r) for r in records))
        await m.rig.wait(lambda: _len_is(m.rig.jobs(), 20), "20 jobs dispatched")
        async with m.rig.pool.acquire() as conn:
            statuses = dict(
                await conn.fetch(
                    "SELECT coalesce(reason_code, status), count(*) FROM jobs GROUP BY 1"
                )
            )
            b = await balance(conn, m.rig.scheduler.ledger.today())
        assert statuses == {"running": 20, "budget_exceeded": 30}
        assert b["reserved_usd"] == Decimal("20") == b["entries_reserved"]
        await asyncio.sleep(0.3)
        assert len(await m.rig.jobs()) == 20
