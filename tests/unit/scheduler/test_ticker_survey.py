"""The ticker's sweep period looks at everything in one read (`Ticker.survey`)."""

from __future__ import annotations

import asyncpg

from schemas.topics import TopicNames
from services.scheduler.dispatch import Dispatcher
from services.scheduler.ticker import Ticker
from tests.unit.scheduler.fakes import fast_settings

ODD = 'o\'neil $q0$ \\ "end"'


async def job(conn: asyncpg.Connection, job_id: str, user: str, status: str) -> None:
    await conn.execute(
        "INSERT INTO jobs (job_id, user_id, tier, kind, image_count, status, request)"
        " VALUES ($1, $2, 'paid', 'pack', 1, $3, '{}')",
        job_id,
        user,
        status,
    )


async def image(
    conn: asyncpg.Connection, job_id: str, index: int, status: str, due_s: float | None
) -> None:
    await conn.execute(
        "INSERT INTO job_images (job_id, image_index, image_id, status, message, due_at)"
        " VALUES ($1, $2::integer, $1 || $2::integer, $3, '{}',"
        " CASE WHEN $4::float8 IS NULL THEN NULL"
        " ELSE now() + make_interval(secs => $4::float8) END)",
        job_id,
        index,
        status,
        due_s,
    )


def ticker(pool: asyncpg.Pool) -> Ticker:
    settings = fast_settings()
    return Ticker(
        pool,
        Dispatcher(settings, TopicNames("unit")),
        interval_s=1,
        on_staged=lambda: None,
        batch=2,
    )


async def test_an_idle_schema_surveys_as_nothing_to_do(pool: asyncpg.Pool) -> None:
    survey = await ticker(pool).survey()
    assert (survey.due_in, survey.overdue, survey.queued, survey.waiting) == (None, [], [], [])


async def test_the_survey_finds_what_the_separate_reads_found(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await job(conn, ODD, ODD, "running")
        await image(conn, ODD, 0, "retry_wait", -5)  # a retry due now
        await image(conn, ODD, 1, "dispatched", -30)  # overdue, the oldest
        await image(conn, ODD, 2, "dispatched", -20)
        await image(conn, ODD, 3, "dispatched", -10)  # past the batch of 2
        await image(conn, ODD, 4, "dispatched", 60)  # not due yet
        await image(conn, ODD, 5, "waiting", None)
        await job(conn, "queued-job", "bob", "queued")
        await image(conn, "queued-job", 0, "waiting", None)
        await job(conn, "ended", "carol", "completed")
        await image(conn, "ended", 0, "dispatched", -40)  # an ended job's: not overdue
    t = ticker(pool)
    survey = await t.survey()
    assert survey.due_in is not None and -6 < survey.due_in <= -4
    assert survey.overdue == [(ODD, 1), (ODD, 2)]
    assert survey.queued == [("bob", "paid")]
    assert survey.waiting == [ODD]
    alone = await t.due_in()
    assert alone is not None and abs(alone - survey.due_in) < 1
