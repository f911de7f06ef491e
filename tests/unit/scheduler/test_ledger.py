"""Ledger maths on a real PostgreSQL: reserve, settle, release, adjust, refusals, alerts once."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal

import asyncpg
import pytest
from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, BudgetAlert
from schemas.requests import UserTier
from services.scheduler.day_totals import Slot, balance, budget_day, cost_by_provider
from services.scheduler.ledger import Ledger
from services.scheduler.reservations import Hold
from services.scheduler.settings import SchedulerSettings

DAY = date(2026, 3, 1)
PAID = UserTier.PAID


def ledger(budget: str = "10", user_limit: str = "10") -> Ledger:
    settings = SchedulerSettings(
        daily_budget_usd=Decimal(budget), user_daily_limit_paid_usd=Decimal(user_limit)
    )
    return Ledger(settings, "events")


def holds(job: str, *amounts: str, provider: str = "p") -> list[Hold]:
    return [
        Hold(Slot(job, i, 0), 100 + i, provider, f"{provider}-m", Decimal(a))
        for i, a in enumerate(amounts)
    ]


async def alerts(conn: asyncpg.Connection) -> list[BudgetAlert]:
    rows = await conn.fetch("SELECT value FROM outbox ORDER BY id")
    events = [EVENT_ADAPTER.validate_json(bytes(r["value"])) for r in rows]
    return [e for e in events if isinstance(e, BudgetAlert)]


async def test_reserve_settle_release_balance_to_the_micro_dollar(pool: asyncpg.Pool) -> None:
    book = ledger()
    async with pool.acquire() as conn, conn.transaction():
        assert await book.reserve(conn, DAY, "u1", PAID, holds("j", "0.1", "0.2", "0.3")) is None
        assert await book.settle(conn, "j", 0, 100, Decimal("0.07"), "p")
        assert not await book.settle(conn, "j", 0, 100, Decimal("0.07"), "p"), "settled twice"
        assert await book.settle(conn, "j", 1, 101, Decimal("0.25"), "p")  # dearer than estimated
        released = await book.release(conn, "j")
        assert released == Decimal("0.3")
        assert await book.release(conn, "j") == 0, "released twice"
        b = await balance(conn, DAY)
    assert b["reserved_usd"] == 0
    assert b["spent_usd"] == Decimal("0.32") == b["entries_spent"] == b["actual"]
    assert b["entries_reserved"] == b["reserved_usd"] == b["outstanding"]
    assert b["ever_reserved"] == Decimal("0.6")
    assert b["ever_reserved"] == b["settled_reservations"] + b["released"] + b["outstanding"]


async def test_a_job_that_does_not_fit_reserves_nothing(pool: asyncpg.Pool) -> None:
    book = ledger(budget="1.00")
    async with pool.acquire() as conn, conn.transaction():
        refusal = await book.reserve(conn, DAY, "u1", PAID, holds("big", "0.4", "0.4", "0.4"))
        assert refusal is not None and refusal.reason_code == "budget_exceeded"
        assert "$1.00" in refusal.reason and "$1.20" in refusal.reason
        assert await conn.fetchval("SELECT count(*) FROM generations") == 0
        # Exactly the budget fits; a micro-dollar more does not.
        assert await book.reserve(conn, DAY, "u1", PAID, holds("a", "0.5", "0.5")) is None
        refusal = await book.reserve(conn, DAY, "u2", PAID, holds("b", "0.000001"))
        assert refusal is not None and refusal.reason_code == "budget_exceeded"
        b = await balance(conn, DAY)
    assert b["reserved_usd"] == Decimal("1.00")


async def test_user_limit_is_per_user_and_named(pool: asyncpg.Pool) -> None:
    book = ledger(budget="100", user_limit="0.50")
    async with pool.acquire() as conn, conn.transaction():
        assert await book.reserve(conn, DAY, "u1", PAID, holds("a", "0.5")) is None
        refusal = await book.reserve(conn, DAY, "u1", PAID, holds("b", "0.01"))
        assert refusal is not None and refusal.reason_code == "user_budget_exceeded"
        assert "$0.50" in refusal.reason and "paid" in refusal.reason
        assert await book.reserve(conn, DAY, "u2", PAID, holds("c", "0.5")) is None
        # Other days are other budgets.
        assert await book.reserve(conn, date(2026, 3, 2), "u1", PAID, holds("d", "0.5")) is None


async def test_failover_to_a_dearer_offer_must_fit(pool: asyncpg.Pool) -> None:
    book = ledger(budget="1.00")
    async with pool.acquire() as conn, conn.transaction():
        assert await book.reserve(conn, DAY, "u1", PAID, holds("a", "0.6")) is None
        slot = Slot("a", 0, 0)
        refusal = await book.adjust(conn, slot, PAID, "dear", "dear-m", Decimal("1.01"))
        assert refusal is not None and refusal.reason_code == "budget_exceeded"
        assert await book.adjust(conn, slot, PAID, "dear", "dear-m", Decimal("0.9")) is None
        b = await balance(conn, DAY)
        assert b["reserved_usd"] == Decimal("0.9") == b["entries_reserved"]
        assert await book.settle(conn, "a", 0, 100, Decimal("0.8"), "")
        rows = await cost_by_provider(conn)
    assert rows == [
        {
            "provider": "dear",
            "model": "dear-m",
            "images": 1,
            "total_usd": Decimal("0.8"),
            "mean_usd": Decimal("0.8"),
        }
    ]


async def test_cost_reported_after_release_is_still_spent(pool: asyncpg.Pool) -> None:
    book = ledger()
    async with pool.acquire() as conn, conn.transaction():
        assert await book.reserve(conn, DAY, "u1", PAID, holds("a", "0.5")) is None
        assert await book.release(conn, "a") == Decimal("0.5")
        assert await book.settle(conn, "a", 0, 100, Decimal("0.3"), "p")
        b = await balance(conn, DAY)
    assert (b["reserved_usd"], b["spent_usd"]) == (Decimal(0), Decimal("0.3"))


async def test_the_stored_copy_sets_the_cost(pool: asyncpg.Pool) -> None:
    """An attempt run twice: the first completion settles, the copy storage kept restates it."""
    book = ledger()
    async with pool.acquire() as conn, conn.transaction():
        assert await book.reserve(conn, DAY, "u1", PAID, holds("a", "0.5", "0.5")) is None
        assert await book.settle(conn, "a", 0, 100, Decimal("0.000449"), "p")  # copy 2 first
        assert await book.settle_stored(conn, "a", 0, 100, Decimal("0.000412"), "p")
        assert not await book.settle_stored(conn, "a", 0, 100, Decimal("0.000412"), "p")
        assert not await book.settle_stored(conn, "a", 0, 999, Decimal("0.1"), "p"), "other seed"
        # Stored before any completion arrived: a plain settlement.
        assert await book.settle_stored(conn, "a", 1, 101, Decimal("0.3"), "p")
        assert not await book.settle(conn, "a", 1, 101, Decimal("0.31"), "p")
        b = await balance(conn, DAY)
        user_spent = await conn.fetchval("SELECT spent_usd FROM user_budget_days")
        entries = await conn.fetch(
            "SELECT entry, spent_delta FROM ledger_entries WHERE entry = 'restate'"
        )
    assert b["spent_usd"] == Decimal("0.300412") == b["entries_spent"] == b["actual"]
    assert user_spent == Decimal("0.300412")
    assert b["reserved_usd"] == 0 == b["outstanding"]
    assert [(e["entry"], e["spent_delta"]) for e in entries] == [("restate", Decimal("-0.000037"))]


async def test_budget_alerts_once_at_80_and_once_at_100(pool: asyncpg.Pool) -> None:
    book = ledger(budget="10")
    async with pool.acquire() as conn, conn.transaction():
        await book.reserve(conn, DAY, "u1", PAID, holds("a", "7.99"))
        assert await alerts(conn) == []
        await book.reserve(conn, DAY, "u1", PAID, holds("b", "0.01"))
        await book.reserve(conn, DAY, "u1", PAID, holds("c", "0.5"))
        await book.release(conn, "c")
        await book.reserve(conn, DAY, "u1", PAID, holds("d", "0.5"))
        assert [a.data.threshold_percent for a in await alerts(conn)] == [80]
        await book.reserve(conn, DAY, "u1", PAID, holds("e", "1.5"))
        await book.settle(conn, "e", 0, 100, Decimal("1.5"), "p")
        got = await alerts(conn)
    assert [a.data.threshold_percent for a in got] == [80, 100]
    assert got[0].id != got[1].id
    assert got[1].data.budget_usd == 10.0


def test_day_boundary_follows_the_configured_zone() -> None:
    late = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    assert budget_day(late, "UTC") == date(2026, 3, 1)
    assert budget_day(late, "+02:00") == date(2026, 3, 2)
    assert budget_day(late, "Europe/Berlin") == date(2026, 3, 2)
    early = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    assert budget_day(early, "-05:00") == date(2026, 3, 1)
    assert budget_day(early, "America/New_York") == date(2026, 3, 1)
    assert budget_day(early, "-0500") == date(2026, 3, 1)


def test_unknown_timezone_is_refused_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match=r"budget_timezone|IMAGEGEN_BUDGET_TIMEZONE"):
        SchedulerSettings(budget_timezone="Mars/Olympus_Mons")


async def test_two_settlements_of_one_image_at_once_book_it_once(pool: asyncpg.Pool) -> None:
    """The settlement's one statement locks the generation and re-checks it: a second
    settlement that waited for the first's lock finds it settled and books nothing."""
    book = ledger()
    async with pool.acquire() as conn, conn.transaction():
        assert await book.reserve(conn, DAY, "u1", PAID, holds("j", "0.1")) is None
    async with pool.acquire() as first, pool.acquire() as second:
        await first.execute("BEGIN")
        assert await book.settle(first, "j", 0, 100, Decimal("0.07"), "p")
        waiting = asyncio.create_task(book.settle(second, "j", 0, 100, Decimal("0.09"), "p"))
        second_pid = second.get_server_pid()
        # The second settlement is blocked on the generation's lock before the first commits
        # (asked on a third connection: a transaction keeps its first view of the activity).
        while not await pool.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", second_pid
        ):
            assert not waiting.done(), "the second settlement did not wait for the lock"
            await asyncio.sleep(0.01)
        await first.execute("COMMIT")
        assert not await waiting, "booked twice"
        b = await balance(first, DAY)
    assert b["spent_usd"] == Decimal("0.07") == b["entries_spent"] == b["actual"]
    assert b["reserved_usd"] == 0 == b["outstanding"]
