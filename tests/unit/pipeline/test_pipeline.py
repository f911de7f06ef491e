"""The pack flow through scheduler, generator, postprocess and storage handlers."""

from __future__ import annotations

import uuid

from schemas.characters import CharacterSpec
from schemas.events import GenerationFailed, ImageStored, JobStatus, PackCompleted
from schemas.requests import GenerateImages, UserTier
from services.scheduler.expansion import expand
from tests.unit.pipeline.harness import FakeBackend, Pipeline, running_pipeline


def pack(count: int = 5, user: str = "alice", tier: UserTier = UserTier.PAID) -> GenerateImages:
    return GenerateImages(
        job_id=str(uuid.uuid4()),
        user_id=user,
        tier=tier,
        character=CharacterSpec(id="char-1", name="Mira", seed=1234),
        image_count=count,
        width=64,
        height=64,
    )


async def submit(p: Pipeline, request: GenerateImages) -> None:
    await p.broker.publisher().publish(p.topics.requests, request.user_id, request)


async def test_pack_of_five_completes_with_every_image_stored_once(database_url: str) -> None:
    async with running_pipeline(database_url) as p:
        request = pack(5)
        await submit(p, request)
        done = await p.wait_for("pack_completed", request.job_id)
        assert isinstance(done, PackCompleted)
        assert done.data.status is JobStatus.COMPLETED
        assert done.data.completed_count == 5

        stored = [e for e in p.events() if isinstance(e, ImageStored)]
        assert sorted(e.data.image_index for e in stored) == [0, 1, 2, 3, 4]
        async with p.storage_pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM images") == 5
        for event in stored:
            names = {r.name for r in event.data.renditions}
            assert names == {"original", "display", "print", "thumbnail"}
            for rendition in event.data.renditions:
                assert rendition.key.startswith("users/alice/characters/char-1/images/")
                assert await p.blobs.exists(rendition.key)
        # Paid work goes to the realtime tier; per-image seeds differ.
        jobs = p.broker.records(p.topics.jobs(expand(request, steps=1, guidance=1)[0].tier))
        assert len(jobs) == 5
        assert len(set(p.backend.calls)) == 5
        # Progress: every step of every image reported (interval 0 in the harness).
        progress = [e for e in p.events() if e.type == "generation_progress"]  # type: ignore[attr-defined]
        assert len(progress) == 5 * 4


async def test_redelivered_messages_store_nothing_twice(database_url: str) -> None:
    async with running_pipeline(database_url) as p:
        request = pack(3)
        await submit(p, request)
        await p.wait_for("pack_completed", request.job_id)
        publisher = p.broker.publisher()
        # Redeliver the request and every processed image, as a crashed consumer would.
        await submit(p, request)
        for record in p.broker.records(p.topics.images_processed):
            await publisher.publish(record.topic, record.key, record.value)
        await p.wait_for("pack_completed", request.job_id)
        import asyncio

        await asyncio.sleep(0.5)
        async with p.storage_pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM images") == 3
        jobs_total = sum(len(p.broker.records(t)) for t in p.topics.all_jobs())
        assert jobs_total == 3, "a redelivered request must not enqueue its images again"
        completions = [e for e in p.events() if e.type == "pack_completed"]  # type: ignore[attr-defined]
        assert len({e.id for e in completions}) == 1


async def test_failing_image_is_retried_then_pack_completes_partially(database_url: str) -> None:
    request = pack(3, tier=UserTier.FREE)
    failing_seed = expand(request, steps=1, guidance=1)[1].seed
    backend = FakeBackend(fail_seeds={failing_seed})
    async with running_pipeline(database_url, backend) as p:
        await submit(p, request)
        done = await p.wait_for("pack_completed", request.job_id)
        assert isinstance(done, PackCompleted)
        assert done.data.status is JobStatus.PARTIALLY_COMPLETED
        assert (done.data.completed_count, done.data.failed_count) == (2, 1)
        assert backend.calls.count(failing_seed) == 3  # max_attempts
        failures = [e for e in p.events() if isinstance(e, GenerationFailed)]
        # Every attempt fails non-final at the generator; the scheduler alone says final.
        assert [(e.source, e.data.final) for e in failures] == [
            ("imagegen/generator", False),
            ("imagegen/generator", False),
            ("imagegen/generator", False),
            ("imagegen/scheduler", True),
        ]
        assert "exploded" in failures[-1].data.error


async def test_transient_failure_recovers_on_retry(database_url: str) -> None:
    request = pack(2)
    flaky_seed = expand(request, steps=1, guidance=1)[0].seed
    backend = FakeBackend(fail_seeds={flaky_seed}, failures=1)
    async with running_pipeline(database_url, backend) as p:
        await submit(p, request)
        done = await p.wait_for("pack_completed", request.job_id)
        assert isinstance(done, PackCompleted)
        assert done.data.status is JobStatus.COMPLETED


async def test_undecodable_request_is_dead_lettered_and_work_continues(database_url: str) -> None:
    async with running_pipeline(database_url) as p:
        await p.broker.publisher().publish(p.topics.requests, "mallory", b'{"type": "nonsense"}')
        request = pack(1)
        await submit(p, request)
        await p.wait_for("pack_completed", request.job_id)
        letters = p.broker.records(p.topics.dead_letter)
        assert len(letters) == 1
        assert letters[0].headers["x-error-type"] == "PoisonMessageError"
