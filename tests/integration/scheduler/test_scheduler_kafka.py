"""The scheduler on the real broker and PostgreSQL: budget under concurrency, failover, cancel."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal

from schemas.events import JobStatus
from schemas.jobs import GenerateImage
from schemas.requests import CancelJob
from services.scheduler.day_totals import balance
from tests.integration.scheduler.kafka_rig import kafka_rig
from tests.unit.scheduler.fakes import catalogue_json, failed, fast_settings
from tests.unit.scheduler.memrig import pack


async def test_fifty_concurrent_requests_run_exactly_what_the_budget_fits(
    kafka_bootstrap: str, topic_namespace: str, database_url: str
) -> None:
    # $0.731 per image (estimated and actual), $14.62 a day: 20 images fit. Three scheduler
    # instances share the work. (Were actual costs below estimates, the difference would be
    # free again once settled and more jobs would fit: that is the ledger working.)
    settings = fast_settings(
        daily_budget_usd=Decimal("14.62"),
        catalogue=catalogue_json(("cheap", "0.731", "high")),
    )
    async with kafka_rig(
        kafka_bootstrap, topic_namespace, database_url, settings, lambda _j: "ok", instances=3
    ) as k:
        k.generator.cost = Decimal("0.731")
        requests = [pack(1, user=f"user-{n:02d}") for n in range(50)]
        await asyncio.gather(*(k.sched.submit(r, r.user_id) for r in requests))

        async def all_ended() -> bool:
            ended = {e.job_id for e in await k.sched.events() if e.type == "pack_completed"}
            return ended >= {r.job_id for r in requests}

        await k.sched.wait(all_ended, "50 terminal events", timeout=90)
        ends = {e.job_id: e for e in await k.sched.events() if e.type == "pack_completed"}
        outcome = Counter((e.data.status, e.data.reason_code) for e in ends.values())
        assert outcome == {
            (JobStatus.COMPLETED, None): 20,
            (JobStatus.FAILED, "budget_exceeded"): 30,
        }
        refused = [e for e in ends.values() if e.data.reason_code]
        assert all("$14.62" in (e.data.reason or "") for e in refused)
        jobs = await k.sched.jobs()
        assert len(jobs) == 20, "none beyond the budget was sent to a generator"
        assert {j.image.job_id for j in jobs} == {
            j for j, e in ends.items() if e.data.status is JobStatus.COMPLETED
        }
        async with k.sched.pool.acquire() as conn:
            b = await balance(conn, k.sched.scheduler.ledger.today())
        assert b["reserved_usd"] == Decimal(0) == b["outstanding"] == b["entries_reserved"]
        assert b["spent_usd"] == Decimal("14.62") == b["entries_spent"] == b["actual"]
        assert b["ever_reserved"] == Decimal("14.62") == b["settled_reservations"] + b["released"]
        alerts = [e for e in await k.sched.events() if e.type == "budget_alert"]
        assert sorted(a.data.threshold_percent for a in alerts) == [80, 100]


async def test_failing_provider_retries_fails_over_and_completes_partially(
    kafka_bootstrap: str, topic_namespace: str, database_url: str
) -> None:
    settings = fast_settings(
        catalogue=catalogue_json(("flaky", "1.00", "high"), ("steady", "2.00", "high")),
        retry_backoff_s=0.1,
    )

    def policy(job: GenerateImage) -> str:
        if job.image.image_index == 2:
            return "fail"
        return "fail" if job.provider == "flaky" and job.image.image_index == 1 else "ok"

    async with kafka_rig(
        kafka_bootstrap,
        topic_namespace,
        database_url,
        settings,
        policy,  # type: ignore[arg-type]
    ) as k:
        request = pack(4)
        await k.sched.submit(request, request.user_id)
        done = await k.sched.wait_event("pack_completed", request.job_id, timeout=60)
        assert done.data.status is JobStatus.PARTIALLY_COMPLETED
        assert (done.data.completed_count, done.data.failed_count) == (3, 1)
        tried = Counter((j.image.image_index, j.provider) for j in await k.sched.jobs())
        assert tried == {
            (0, "flaky"): 1,
            (1, "flaky"): 3,
            (1, "steady"): 1,
            (2, "flaky"): 3,
            (2, "steady"): 3,
            (3, "flaky"): 1,
        }
        finals = [
            e for e in await k.sched.events() if e.type == "generation_failed" and e.data.final
        ]
        assert [(f.data.image_index, f.data.error) for f in finals] == [(2, "steady exploded")]
        async with k.sched.pool.acquire() as conn:
            hanging = await conn.fetchval(
                "SELECT count(*) FROM job_images WHERE status NOT IN ('stored', 'failed')"
            )
            b = await balance(conn, k.sched.scheduler.ledger.today())
        assert hanging == 0
        assert b["reserved_usd"] == 0 and b["spent_usd"] == Decimal("1.5")


async def test_cancel_mid_pack_stops_dispatch_releases_budget_and_ends_cancelled(
    kafka_bootstrap: str, topic_namespace: str, database_url: str
) -> None:
    settings = fast_settings(retry_backoff_s=1.0)

    def policy(job: GenerateImage) -> str:
        index = job.image.image_index
        return "ok" if index < 2 else "fail" if index == 2 else "hold"

    async with kafka_rig(
        kafka_bootstrap,
        topic_namespace,
        database_url,
        settings,
        policy,  # type: ignore[arg-type]
    ) as k:
        request = pack(6)
        await k.sched.submit(request, request.user_id)

        async def midway() -> bool:
            async with k.sched.pool.acquire() as conn:
                rows = dict(
                    await conn.fetch(
                        "SELECT image_index, status FROM job_images WHERE job_id = $1",
                        request.job_id,
                    )
                )
            return rows.get(0) == rows.get(1) == "stored" and rows.get(2) == "retry_wait"

        await k.sched.wait(midway, "two stored, one waiting for a retry", timeout=30)
        await k.sched.submit(CancelJob(job_id=request.job_id, user_id="alice"), "alice")
        cancelled = await k.sched.wait_event("job_cancelled", request.job_id)
        assert cancelled.data.released_usd == 4.0  # images 2..5 at $1 each
        sent_at_cancel = len(await k.sched.jobs())
        assert sent_at_cancel == 6
        # Images 3..5 are in flight: the job is not over until they report (README,
        # "Cancelling").
        await asyncio.sleep(0.5)
        assert [e for e in await k.sched.events() if e.type == "pack_completed"] == []

        # One finishes (stored: its cost booked, it counts), the generator stops the others.
        held = sorted(k.generator.held, key=lambda j: j.image.image_index)
        assert [j.image.image_index for j in held] == [3, 4, 5]
        await k.generator.answer(held[0], "ok")
        for job in held[1:]:
            await k.generator.emit(failed(job, retryable=False, error_type="Cancelled"))
        done = await k.sched.wait_event("pack_completed", request.job_id)
        assert done.data.status is JobStatus.CANCELLED
        assert (done.data.completed_count, done.data.failed_count) == (3, 0)
        assert done.data.cost_usd == 1.5
        await asyncio.sleep(2.0)  # past the retry's due time: it must not be sent
        assert len(await k.sched.jobs()) == sent_at_cancel
        events = [e for e in await k.sched.events() if e.job_id == request.job_id]
        assert events[-1].type == "pack_completed"
        ends = [e for e in events if e.type == "pack_completed"]
        assert len({e.id for e in ends}) == 1
        async with k.sched.pool.acquire() as conn:
            b = await balance(conn, k.sched.scheduler.ledger.today())
            status = await conn.fetchval(
                "SELECT status FROM jobs WHERE job_id = $1", request.job_id
            )
        assert status == "cancelled"
        assert b["reserved_usd"] == 0
        assert b["spent_usd"] == Decimal("1.5"), "two stored images and the late one"
