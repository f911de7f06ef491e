"""A request's few round trips, on a real PostgreSQL: the job's row goes with BEGIN, the user's
row is locked inside statements sent anyway, an admitted job's images are not read back; a
redelivery changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal

import asyncpg
import pytest

from imagegen.db import create_pool, migrate
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.characters import CharacterSpec
from schemas.events import EventBase
from schemas.jobs import GenerateImage
from schemas.requests import GenerateImages, JobKind, UserTier
from schemas.topics import TopicNames
from services.scheduler.dispatch import LOCK_USER
from services.scheduler.handlers import Scheduler
from services.scheduler.jobs import NewJob
from services.scheduler.migrations import MIGRATIONS
from services.scheduler.outbox import transaction
from services.scheduler.user_locks import note_user_locked, tracking_user_locks, user_locked
from tests.unit.scheduler.fakes import completed, fast_settings, started, stored

# Text that would end an ordinary or a dollar-quoted literal, or look like a parameter.
ODD = "O'Neil $q0$ $1 $$ \\ end"


@dataclass
class Rig:
    scheduler: Scheduler
    pool: asyncpg.Pool
    topics: TopicNames
    sent: list[str] = field(default_factory=list)

    async def statements(self) -> list[str]:
        """The statements sent since the last call (loggers run soon after each query)."""
        await asyncio.sleep(0.05)
        taken = list(self.sent)
        self.sent.clear()
        return taken

    async def request(self, request: GenerateImages, offset: int = 0) -> None:
        await self.scheduler.on_request(
            Record(self.topics.requests, 0, offset, request.user_id, encode(request))
        )

    async def event(self, event: EventBase, offset: int = 0) -> None:
        await self.scheduler.on_event(
            Record(self.topics.events, 0, offset, event.job_id, encode(event))
        )

    async def image(self, job_id: str) -> GenerateImage:
        message = await self.pool.fetchval(
            "SELECT message FROM job_images WHERE job_id = $1 AND image_index = 0", job_id
        )
        return GenerateImage.model_validate_json(message)

    async def status(self, job_id: str) -> str:
        status: str = await self.pool.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
        return status


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    """One scheduler on a pool of one connection whose every statement is logged; its relay
    and ticker do not run (the outbox keeps what was staged)."""
    pool = await create_pool(database_url, "scheduler", min_size=1, max_size=1)
    try:
        await migrate(pool, "scheduler", MIGRATIONS)
        topics = TopicNames("unit")
        settings = fast_settings(max_jobs_in_flight_free=1, user_daily_limit_free_usd=Decimal(10))
        scheduler = Scheduler(settings, pool, InMemoryBroker().publisher(), topics)
        rig = Rig(scheduler, pool, topics)
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda q: rig.sent.append(q.query))
        # asyncpg reads the types it meets first once per connection: not counted.
        warm = one_image("warm")
        await rig.request(warm, offset=100)
        await rig.event(started(await rig.image(warm.job_id)), offset=100)
        await rig.event(completed(await rig.image(warm.job_id), Decimal("0.5")), offset=101)
        await rig.event(stored(await rig.image(warm.job_id), Decimal("0.5")), offset=102)
        await rig.statements()
        yield rig
    finally:
        await pool.close()


def one_image(user: str = "alice") -> GenerateImages:
    return GenerateImages(
        job_id=str(uuid.uuid4()),
        user_id=user,
        tier=UserTier.FREE,
        character=CharacterSpec(id="char", name=ODD, seed=1234),
        image_count=1,
        width=64,
        height=64,
    )


def locks_the_user_alone(statements: list[str]) -> int:
    return sum(s == LOCK_USER for s in statements)


async def test_a_request_is_admitted_and_dispatched_in_one_transaction_of_few_round_trips(
    rig: Rig,
) -> None:
    request = one_image()
    await rig.request(request)
    sent = await rig.statements()
    assert sent[0].startswith("BEGIN; INSERT INTO jobs"), "the job's row goes with BEGIN"
    assert sent[-1] == "COMMIT"
    assert sum(s.startswith("BEGIN") for s in sent) == 1
    assert locks_the_user_alone(sent) == 0, "the user's row is locked with the images' insert"
    assert not any(s.startswith("SELECT image_index, status") for s in sent), (
        "the admitted job's images are not read back"
    )
    # BEGIN + the job, the budget (two), the images, the activation, the dispatch, COMMIT.
    assert len(sent) <= 8, sent
    assert await rig.status(request.job_id) == "running"
    row = await rig.pool.fetchrow(
        "SELECT request, kind, traceparent FROM jobs WHERE job_id = $1", request.job_id
    )
    assert GenerateImages.model_validate_json(row["request"]) == request, "odd text kept as is"
    assert row["kind"] == JobKind.PACK.value
    outbox = "SELECT count(*) FROM outbox WHERE key = $1"
    assert await rig.pool.fetchval(outbox, request.job_id) == 2  # the job, its queued event
    assert await rig.pool.fetchval("SELECT count(*) FROM users WHERE user_id = 'alice'") == 1


async def test_a_redelivered_request_changes_nothing(rig: Rig) -> None:
    request = one_image()
    await rig.request(request)
    before = await rig.pool.fetch(
        "SELECT table_name, n FROM (SELECT 'outbox' AS table_name, count(*) AS n FROM outbox"
        " UNION ALL SELECT 'generations', count(*) FROM generations"
        " UNION ALL SELECT 'ledger_entries', count(*) FROM ledger_entries"
        " UNION ALL SELECT 'job_images', count(*) FROM job_images) t ORDER BY table_name"
    )
    await rig.statements()
    await rig.request(request, offset=1)
    sent = await rig.statements()
    assert sent == [sent[0], "COMMIT"] and sent[0].startswith("BEGIN; INSERT INTO jobs")
    after = await rig.pool.fetch(
        "SELECT table_name, n FROM (SELECT 'outbox' AS table_name, count(*) AS n FROM outbox"
        " UNION ALL SELECT 'generations', count(*) FROM generations"
        " UNION ALL SELECT 'ledger_entries', count(*) FROM ledger_entries"
        " UNION ALL SELECT 'job_images', count(*) FROM job_images) t ORDER BY table_name"
    )
    assert after == before
    assert await rig.status(request.job_id) == "running"


async def test_the_end_of_a_job_locks_the_user_in_its_own_statement_and_frees_the_slot(
    rig: Rig,
) -> None:
    first, second = one_image(), one_image()
    await rig.request(first)
    await rig.request(second, offset=1)  # the free tier's one slot is taken: it waits
    assert await rig.status(second.job_id) == "queued"
    job = await rig.image(first.job_id)
    await rig.event(started(job))
    await rig.event(completed(job, Decimal("0.5")), offset=1)
    await rig.statements()
    await rig.event(stored(job, Decimal("0.5")), offset=2)
    sent = await rig.statements()
    assert locks_the_user_alone(sent) == 0, "the job's end locked the user's row already"
    assert await rig.status(first.job_id) == "completed"
    assert await rig.status(second.job_id) == "running", "the freed slot went to the next job"
    assert (await rig.image(second.job_id)).image.job_id == second.job_id
    assert (
        await rig.pool.fetchval("SELECT status FROM job_images WHERE job_id = $1", second.job_id)
        == "dispatched"
    )
    # A redelivered image_stored changes nothing more.
    outbox = await rig.pool.fetchval("SELECT count(*) FROM outbox")
    await rig.event(stored(job, Decimal("0.5")), offset=3)
    assert await rig.pool.fetchval("SELECT count(*) FROM outbox") == outbox
    assert await rig.status(second.job_id) == "running"


async def test_a_job_refused_at_admission_ends_without_locking_the_user(rig: Rig) -> None:
    # Over the free tier's daily limit: the job ends failed before it held a slot.
    request = one_image().model_copy(update={"image_count": 20})
    await rig.request(request)
    sent = await rig.statements()
    assert locks_the_user_alone(sent) == 0
    assert not any("UPDATE jobs j SET status = 'running'" in s for s in sent)
    assert await rig.status(request.job_id) == "failed"


@pytest.mark.parametrize("sent_with_begin", [True, False])
async def test_a_new_job_row_is_written_once_however_it_is_sent(
    pool: asyncpg.Pool, sent_with_begin: bool
) -> None:
    scheduler = Scheduler(fast_settings(), pool, InMemoryBroker().publisher(), TopicNames("unit"))
    book = scheduler._book
    job = NewJob(
        ODD,
        ODD,
        UserTier.PAID,
        JobKind.PACK,
        '{"prompt": "' + ODD.replace("\\", "\\\\") + '"}',
        ODD,
        ODD,
    )
    written = []
    for _ in range(2):
        async with pool.acquire() as conn:
            lead = job.statement() if sent_with_begin else ""
            async with transaction(conn, lead) as status:
                written.append(await book.insert(conn, job, sent=status if lead else None))
    assert written == [True, False]
    row = await pool.fetchrow("SELECT * FROM jobs WHERE job_id = $1", ODD)
    assert (row["user_id"], row["story_id"], row["traceparent"]) == (ODD, ODD, ODD)
    assert row["status"] == "accepted"


def test_a_job_whose_text_cannot_be_a_literal_is_not_sent_with_begin() -> None:
    job = NewJob("j", "u", UserTier.PAID, JobKind.PACK, "{}", "nul\x00here")
    assert job.statement() == ""


async def test_requests_handed_over_together_lock_their_user_once_and_queue_in_order(
    rig: Rig,
) -> None:
    first, second = one_image(), one_image()
    records = [
        Record(rig.topics.requests, 0, at, r.user_id, encode(r))
        for at, r in enumerate((first, second))
    ]
    await rig.scheduler.on_requests(records)
    sent = await rig.statements()
    assert sum(s.startswith("BEGIN") for s in sent) == 1, "one transaction for the batch"
    assert locks_the_user_alone(sent) == 0
    assert await rig.status(first.job_id) == "running"
    assert await rig.status(second.job_id) == "queued"  # the free tier's one slot is taken
    # Redelivered together: nothing changes.
    await rig.scheduler.on_requests(records)
    assert await rig.status(second.job_id) == "queued"
    assert (
        await rig.pool.fetchval(
            "SELECT count(*) FROM job_images WHERE job_id = ANY($1)", [first.job_id, second.job_id]
        )
        == 2
    )


def test_a_noted_user_lock_lasts_as_long_as_its_transaction() -> None:
    note_user_locked("alice")  # outside a transaction: nothing is noted
    assert not user_locked("alice")
    with pytest.raises(RuntimeError), tracking_user_locks():
        note_user_locked("alice")
        assert user_locked("alice") and not user_locked("bob")
        raise RuntimeError("the transaction failed")
    assert not user_locked("alice"), "nothing outlives the transaction that noted it"
    with tracking_user_locks():
        assert not user_locked("alice")
