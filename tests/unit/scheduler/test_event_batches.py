"""Outcome batches whose first statement travels with BEGIN: all of it commits, or none."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from imagegen.kafka import Record, encode
from schemas.jobs import GenerateImage
from services.scheduler.overdue import AWAITING_COMPLETED, AWAITING_STORED
from tests.unit.scheduler.fakes import SchedulerRig, completed, fast_settings, started, stored
from tests.unit.scheduler.memrig import memory_rig, pack


def record(rig: SchedulerRig, event: Any, offset: int) -> Record:
    return Record(rig.topics.events, 0, offset, event.job_id, encode(event))


async def dispatched(rig: SchedulerRig, count: int) -> list[GenerateImage]:
    async def all_there() -> bool:
        return len(await rig.jobs()) == count

    await rig.wait(all_there, f"{count} images dispatched")
    return sorted(await rig.jobs(), key=lambda j: j.image.image_index)


async def state(pool: asyncpg.Pool, job: GenerateImage) -> tuple[str | None, bool, str]:
    """The image's awaited event, whether it has a deadline, and its generation's status."""
    row = await pool.fetchrow(
        "SELECT i.awaiting, i.due_at IS NOT NULL AS due, g.status AS generation"
        " FROM job_images i JOIN generations g USING (job_id, image_index)"
        " WHERE i.job_id = $1 AND i.image_index = $2",
        job.image.job_id,
        job.image.image_index,
    )
    assert row is not None
    return row["awaiting"], row["due"], row["generation"]


async def test_a_batch_led_by_a_completion_commits_or_rolls_back_as_one(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fast_settings(attempt_run_deadline_s=600, attempt_store_deadline_s=600)
    async with memory_rig(database_url, settings) as m:
        rig = m.rig
        request = pack(2)
        await rig.submit(request, request.user_id)
        first, second = await dispatched(rig, 2)
        assert await state(rig.pool, first) == (None, False, "reserved")

        async def broken(*_: object) -> None:
            raise RuntimeError("the second event's handling failed")

        # The completion's deadline update went with BEGIN; the batch fails after it.
        with monkeypatch.context() as patch:
            patch.setattr(rig.scheduler.outcomes, "_stored", broken)
            with pytest.raises(RuntimeError):
                await rig.scheduler.on_events(
                    [record(rig, completed(first, 0.5), 1), record(rig, stored(second, 1), 2)]
                )
        assert await state(rig.pool, first) == (None, False, "reserved"), "rolled back"

        await rig.scheduler.on_events(
            [record(rig, completed(first, 0.5), 1), record(rig, started(second), 2)]
        )
        assert await state(rig.pool, first) == (AWAITING_STORED, True, "settled")
        assert await state(rig.pool, second) == (AWAITING_COMPLETED, True, "reserved")


async def ledger_of(pool: asyncpg.Pool, job: GenerateImage) -> tuple[Any, ...]:
    """The image's generation cost, the job's status and end, its entries, and the day."""
    row = await pool.fetchrow(
        "SELECT g.actual_usd, j.status, j.finished_at,"
        " (SELECT count(*) FROM ledger_entries e WHERE e.job_id = j.job_id) AS entries,"
        " d.spent_usd, d.reserved_usd"
        " FROM jobs j JOIN generations g USING (job_id) JOIN budget_days d ON d.day = g.day"
        " WHERE j.job_id = $1",
        job.image.job_id,
    )
    assert row is not None
    return tuple(row.values())


async def test_a_stored_copy_at_another_cost_restates_it_once_and_ends_the_job(
    database_url: str,
) -> None:
    async with memory_rig(database_url, fast_settings()) as m:
        rig = m.rig
        request = pack(1)
        await rig.submit(request, request.user_id)
        (job,) = await dispatched(rig, 1)
        await rig.scheduler.on_events([record(rig, completed(job, Decimal("0.5")), 1)])
        # The stored copy is another run of the attempt: its cost is the one booked.
        await rig.scheduler.on_events([record(rig, stored(job, Decimal("0.7")), 2)])
        after = await ledger_of(rig.pool, job)
        cost, status, finished, entries, spent, reserved = after
        assert (cost, status, spent, reserved) == (Decimal("0.7"), "completed", cost, 0)
        assert finished is not None and entries == 3, "reserve, settle, restate"
        # Redelivered: the image is stored and the job ended already; nothing changes.
        await rig.scheduler.on_events([record(rig, stored(job, Decimal("0.7")), 2)])
        assert await ledger_of(rig.pool, job) == after
