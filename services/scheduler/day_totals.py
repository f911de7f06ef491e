"""The ledger's day totals: budget days, money amounts, entries and the alerts they raise.

Every change locks the day's row (`budget_days`) and then the user's day row, in that
order, inside the caller's transaction; totals there always equal the sums of
`ledger_entries`, which `balance()` checks. The policy is described in `ledger.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from imagegen.errors import ConfigurationError
from schemas.events import BudgetAlert, BudgetAlertData, event_id
from schemas.requests import UserTier
from services.scheduler.outbox import stage_event
from services.scheduler.settings import SchedulerSettings

MICRO = Decimal("0.000001")
ALERT_THRESHOLDS = (80, 100)
# The day's row, then the user's day row (locked in that order, as everywhere: the user's
# update reads the day's, so it runs after it), by given deltas; the day's totals come back
# (`TOTALS`; `TOTALS_CTES` for a statement that selects them with more).
TOTALS_CTES = (
    "day_totals AS (UPDATE budget_days SET reserved_usd = reserved_usd + {reserved},"
    " spent_usd = spent_usd + {spent} WHERE day = {day}"
    " RETURNING budget_usd, reserved_usd, spent_usd, alerted),"
    " user_totals AS (UPDATE user_budget_days u SET reserved_usd = u.reserved_usd + {reserved},"
    " spent_usd = u.spent_usd + {spent} FROM day_totals"
    " WHERE u.day = {day} AND u.user_id = {user})"
)
TOTALS = TOTALS_CTES + " SELECT budget_usd, reserved_usd, spent_usd, alerted FROM day_totals"
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def usd(value: float | Decimal | str | int) -> Decimal:
    """Money from any number: floats via their shortest repr, never their binary expansion."""
    return Decimal(str(value)).quantize(MICRO)


def parse_timezone(name: str) -> tzinfo:
    if name.upper() in ("UTC", "Z"):
        return UTC
    match = _OFFSET.match(name)
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes))
        return timezone(-delta if sign == "-" else delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"IMAGEGEN_BUDGET_TIMEZONE={name!r} is neither an IANA zone nor an offset like +05:30"
        ) from exc


def budget_day(now: datetime, tz: str) -> date:
    """The budget day `now` falls on, in the configured zone."""
    return now.astimezone(parse_timezone(tz)).date()


@dataclass(frozen=True)
class Refusal:
    """Why money could not be reserved."""

    reason_code: str
    reason: str


@dataclass(frozen=True)
class Slot:
    """Which reservation: one generation (image variation) of one job."""

    job_id: str
    image_index: int
    variation: int


class DayTotals:
    """The day rows' totals, the entries that explain them and the alerts they raise."""

    def __init__(self, settings: SchedulerSettings, events_topic: str) -> None:
        self._settings = settings
        self._events_topic = events_topic

    async def check(
        self, conn: asyncpg.Connection, day: date, user_id: str, tier: UserTier, amount: Decimal
    ) -> Refusal | None:
        """Whether `amount` more fits; locks both day rows like `Reservations.reserve`."""
        budget = self._settings.daily_budget_usd
        limit = self._settings.user_daily_limit(tier)
        g = await conn.fetchrow(
            "SELECT reserved_usd + spent_usd AS c FROM budget_days WHERE day = $1 FOR UPDATE", day
        )
        u = await conn.fetchrow(
            "SELECT reserved_usd + spent_usd AS c FROM user_budget_days"
            " WHERE day = $1 AND user_id = $2 FOR UPDATE",
            day,
            user_id,
        )
        if g["c"] + amount > budget:
            return Refusal("budget_exceeded", f"the daily budget of ${budget:.2f} is used up")
        if u["c"] + amount > limit:
            return Refusal("user_budget_exceeded", f"your daily limit of ${limit:.2f} is used up")
        return None

    async def entry(
        self,
        conn: asyncpg.Connection,
        day: date,
        user_id: str,
        slot: Slot,
        entry: str,
        reserved_delta: Decimal | int,
        spent_delta: Decimal | int,
        provider: str,
    ) -> None:
        await conn.execute(
            "INSERT INTO ledger_entries (day, user_id, job_id, image_index, variation, entry,"
            " reserved_delta, spent_delta, provider) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            day,
            user_id,
            slot.job_id,
            slot.image_index,
            slot.variation,
            entry,
            Decimal(reserved_delta),
            Decimal(spent_delta),
            provider,
        )

    async def add(
        self,
        conn: asyncpg.Connection,
        day: date,
        user_id: str,
        reserved_delta: Decimal,
        spent_delta: Decimal,
    ) -> None:
        row = await conn.fetchrow(
            "WITH " + TOTALS.format(day="$1", user="$2", reserved="$3", spent="$4"),
            day,
            user_id,
            reserved_delta,
            spent_delta,
        )
        await self.after(conn, day, row, reserved_delta + spent_delta)

    async def after(
        self, conn: asyncpg.Connection, day: date, row: asyncpg.Record | None, added: Decimal
    ) -> None:
        """Alerts when money was added (the day's totals after the change in `row`)."""
        if added > 0 and row is not None:
            await self._alerts(conn, day, row)

    async def _alerts(self, conn: asyncpg.Connection, day: date, row: asyncpg.Record) -> None:
        budget: Decimal = row["budget_usd"]
        committed: Decimal = row["reserved_usd"] + row["spent_usd"]
        alerted: list[int] = list(row["alerted"])
        for threshold in ALERT_THRESHOLDS:
            if threshold in alerted or committed * 100 < budget * threshold:
                continue
            alerted.append(threshold)
            await stage_event(
                conn,
                self._events_topic,
                BudgetAlert(
                    id=event_id("budget_alert", "global", day.isoformat(), threshold),
                    source="",
                    subject=f"budget/{day.isoformat()}",
                    data=BudgetAlertData(
                        scope="global",
                        threshold_percent=threshold,
                        spent_usd=float(committed),
                        budget_usd=float(budget),
                    ),
                ),
            )
        if len(alerted) != len(row["alerted"]):
            await conn.execute("UPDATE budget_days SET alerted = $2 WHERE day = $1", day, alerted)


async def balance(conn: asyncpg.Connection, day: date) -> dict[str, Decimal]:
    """The day's totals next to the sums they must equal (tests and operators)."""
    row = await conn.fetchrow(
        "SELECT d.reserved_usd, d.spent_usd,"
        " (SELECT coalesce(sum(reserved_delta), 0) FROM ledger_entries e WHERE e.day = d.day)"
        "   AS entries_reserved,"
        " (SELECT coalesce(sum(spent_delta), 0) FROM ledger_entries e WHERE e.day = d.day)"
        "   AS entries_spent,"
        " (SELECT coalesce(sum(reserved_usd), 0) FROM generations g WHERE g.day = d.day)"
        "   AS outstanding,"
        " (SELECT coalesce(sum(actual_usd), 0) FROM generations g WHERE g.day = d.day)"
        "   AS actual,"
        " (SELECT coalesce(sum(reserved_delta), 0) FROM ledger_entries e"
        "   WHERE e.day = d.day AND entry IN ('reserve', 'adjust')) AS ever_reserved,"
        " (SELECT coalesce(-sum(reserved_delta), 0) FROM ledger_entries e"
        "   WHERE e.day = d.day AND entry = 'settle') AS settled_reservations,"
        " (SELECT coalesce(-sum(reserved_delta), 0) FROM ledger_entries e"
        "   WHERE e.day = d.day AND entry = 'release') AS released"
        " FROM budget_days d WHERE d.day = $1",
        day,
    )
    if row is None:
        return {}
    return dict(row.items())


async def cost_by_provider(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """Images drawn and their actual cost, per provider and model."""
    rows = await conn.fetch(
        "SELECT provider, model, images, total_usd, mean_usd FROM cost_by_provider"
        " ORDER BY provider, model"
    )
    return [dict(r.items()) for r in rows]
