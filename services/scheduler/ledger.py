"""The budget ledger: what may be spent today, reserved, settled and released, to the micro-dollar.

Policy
- A global daily budget (`IMAGEGEN_DAILY_BUDGET_USD`, default $500) and a per-user daily
  limit per tier (`IMAGEGEN_USER_DAILY_LIMIT_PAID_USD` $50, `..._FREE_USD` $2). The day
  runs midnight to midnight in `IMAGEGEN_BUDGET_TIMEZONE` (UTC default; an IANA name or a
  fixed offset such as `+05:30`); all of a job's money is booked on the day it was scheduled.
- Committed money = reserved + spent. A job is admitted all-or-nothing: the estimate of
  every image (cheapest offer of its chain) is reserved at once if it fits both the global
  budget and the user's limit, else the job ends `failed` with `budget_exceeded` or
  `user_budget_exceeded`. A failover to a dearer offer and a consistency variation reserve
  their extra cost the same way, or the image fails.
- The generator's actual cost settles a reservation (spent += actual, reserved -= estimate);
  a failed or cancelled image releases it. A cost reported after its reservation was released
  (an image that finished while its job was being cancelled) is still spent: money is counted
  where it went. When an attempt ran twice, the copy that was stored sets the cost
  (`settle_stored`).
- `budget_alert` is emitted once per day and threshold (80 %, 100 % of committed money), with
  an id derived from the day and threshold.

Concurrency: every change locks the day's row (`budget_days`) and then the user's day row, in
that order, inside the caller's transaction; totals there always equal the sums of
`ledger_entries`, which `balance()` checks.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from imagegen.errors import ConfigurationError
from imagegen.metrics import instruments
from schemas.events import BudgetAlert, BudgetAlertData, event_id
from schemas.requests import UserTier
from services.scheduler.outbox import stage_event
from services.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)
MICRO = Decimal("0.000001")
ALERT_THRESHOLDS = (80, 100)
# The day's row, then the user's day row (locked in that order, as everywhere: the user's
# update reads the day's, so it runs after it), by given deltas; the day's totals come back.
_TOTALS = (
    "day_totals AS (UPDATE budget_days SET reserved_usd = reserved_usd + {reserved},"
    " spent_usd = spent_usd + {spent} WHERE day = {day}"
    " RETURNING budget_usd, reserved_usd, spent_usd, alerted),"
    " user_totals AS (UPDATE user_budget_days u SET reserved_usd = u.reserved_usd + {reserved},"
    " spent_usd = u.spent_usd + {spent} FROM day_totals"
    " WHERE u.day = {day} AND u.user_id = {user})"
    " SELECT budget_usd, reserved_usd, spent_usd, alerted FROM day_totals"
)
_GENERATION = (
    "job_id, image_index, variation, day, user_id, reserved_usd, actual_usd, provider, status"
)
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


@dataclass(frozen=True)
class Hold:
    """A reservation to make."""

    slot: Slot
    seed: int
    provider: str
    model: str
    amount: Decimal


class Ledger:
    def __init__(self, settings: SchedulerSettings, events_topic: str) -> None:
        self._settings = settings
        self._events_topic = events_topic

    def today(self, now: datetime | None = None) -> date:
        return budget_day(now or datetime.now(UTC), self._settings.budget_timezone)

    async def reserve(
        self,
        conn: asyncpg.Connection,
        day: date,
        user_id: str,
        tier: UserTier,
        holds: list[Hold],
    ) -> Refusal | None:
        """Reserve every hold or none (all-or-nothing); None when reserved."""
        amount = sum((h.amount for h in holds), Decimal(0))
        budget = self._settings.daily_budget_usd
        limit = self._settings.user_daily_limit(tier)
        global_row = await conn.fetchrow(
            "INSERT INTO budget_days (day, budget_usd) VALUES ($1, $2)"
            " ON CONFLICT (day) DO UPDATE SET budget_usd = EXCLUDED.budget_usd"
            " RETURNING reserved_usd, spent_usd",
            day,
            budget,
        )
        user_row = await conn.fetchrow(
            "INSERT INTO user_budget_days (day, user_id) VALUES ($1, $2)"
            " ON CONFLICT (day, user_id) DO UPDATE SET user_id = EXCLUDED.user_id"
            " RETURNING reserved_usd, spent_usd",
            day,
            user_id,
        )
        committed = global_row["reserved_usd"] + global_row["spent_usd"]
        if committed + amount > budget:
            return Refusal(
                "budget_exceeded",
                f"the daily budget of ${budget:.2f} for {day.isoformat()} is used up"
                f" (${committed:.2f} committed; this job needs ${amount:.2f})",
            )
        user_committed = user_row["reserved_usd"] + user_row["spent_usd"]
        if user_committed + amount > limit:
            return Refusal(
                "user_budget_exceeded",
                f"your daily limit of ${limit:.2f} ({tier.value} tier) for {day.isoformat()}"
                f" is used up (${user_committed:.2f} committed; this job needs ${amount:.2f})",
            )
        if holds:
            # Every hold's generation and its entry, in hold order, in one statement.
            await conn.execute(
                "WITH h AS (SELECT * FROM unnest($3::text[], $4::int[], $5::int[],"
                " $6::bigint[], $7::text[], $8::text[], $9::numeric[])"
                " WITH ORDINALITY AS h(job_id, image_index, variation, seed, provider, model,"
                " amount, n)),"
                " g AS (INSERT INTO generations (job_id, image_index, variation, seed, day,"
                " user_id, provider, model, estimated_usd, reserved_usd, status)"
                " SELECT job_id, image_index, variation, seed, $1, $2, provider, model,"
                " amount, amount, 'reserved' FROM h ORDER BY n)"
                " INSERT INTO ledger_entries (day, user_id, job_id, image_index, variation,"
                " entry, reserved_delta, spent_delta, provider)"
                " SELECT $1, $2, job_id, image_index, variation, 'reserve', amount, 0, provider"
                " FROM h ORDER BY n",
                day,
                user_id,
                [h.slot.job_id for h in holds],
                [h.slot.image_index for h in holds],
                [h.slot.variation for h in holds],
                [h.seed for h in holds],
                [h.provider for h in holds],
                [h.model for h in holds],
                [h.amount for h in holds],
            )
        await self._totals(conn, day, user_id, amount, Decimal(0))
        return None

    async def adjust(
        self,
        conn: asyncpg.Connection,
        slot: Slot,
        tier: UserTier,
        provider: str,
        model: str,
        amount: Decimal,
    ) -> Refusal | None:
        """Move a reservation to another offer (failover); a dearer one must fit the budgets."""
        row = await self._generation(conn, slot)
        if row is None or row["status"] != "reserved":
            return None
        delta = amount - row["reserved_usd"]
        if delta > 0:
            refusal = await self._check(conn, row["day"], row["user_id"], tier, delta)
            if refusal is not None:
                return refusal
        await conn.execute(
            "UPDATE generations SET provider = $4, model = $5, estimated_usd = $6,"
            " reserved_usd = $6, updated_at = now()"
            " WHERE job_id = $1 AND image_index = $2 AND variation = $3",
            slot.job_id,
            slot.image_index,
            slot.variation,
            provider,
            model,
            amount,
        )
        if delta:
            await self._entry(conn, row["day"], row["user_id"], slot, "adjust", delta, 0, provider)
            await self._totals(conn, row["day"], row["user_id"], delta, Decimal(0))
        return None

    async def settle(
        self,
        conn: asyncpg.Connection,
        job_id: str,
        image_index: int,
        seed: int | None,
        actual: Decimal,
        provider: str,
    ) -> bool:
        """Book an image's actual cost against its reservation; False if already booked."""
        row = await conn.fetchrow(
            f"SELECT {_GENERATION} FROM generations WHERE job_id = $1 AND image_index = $2"
            " AND status <> 'settled' AND ($3::bigint IS NULL OR seed = $3)"
            " ORDER BY variation DESC LIMIT 1 FOR UPDATE",
            job_id,
            image_index,
            seed,
        )
        if row is None:
            return False
        await self._book(conn, row, actual, provider)
        return True

    async def _book(
        self, conn: asyncpg.Connection, row: asyncpg.Record, actual: Decimal, provider: str
    ) -> None:
        """Settle the (locked) generation `row` at `actual`."""
        provider = provider or row["provider"]
        released = -row["reserved_usd"]
        # The generation, its entry and both day rows in one statement (see `_TOTALS`).
        day_row = await conn.fetchrow(
            "WITH settled AS (UPDATE generations SET status = 'settled', actual_usd = $4,"
            " reserved_usd = 0, provider = $5, updated_at = now()"
            " WHERE job_id = $1 AND image_index = $2 AND variation = $3),"
            " entry AS (INSERT INTO ledger_entries (day, user_id, job_id, image_index,"
            " variation, entry, reserved_delta, spent_delta, provider)"
            " VALUES ($6, $7, $1, $2, $3, 'settle', $8, $4, $5)), "
            + _TOTALS.format(day="$6", user="$7", reserved="$8", spent="$4"),
            row["job_id"],
            row["image_index"],
            row["variation"],
            actual,
            provider,
            row["day"],
            row["user_id"],
            released,
        )
        await self._after_totals(conn, row["day"], day_row, released + actual)
        instruments().budget_consumed.add(float(actual), {"provider": provider})

    async def settle_stored(
        self,
        conn: asyncpg.Connection,
        job_id: str,
        image_index: int,
        seed: int,
        actual: Decimal,
        provider: str,
    ) -> bool:
        """Book the cost of the image that was stored; False if nothing changed.

        An attempt that is run twice (a generator killed after its image went out, then run
        again on redelivery) yields two copies with their own costs. The first
        `generation_completed` settles; the copy that storage keeps may be the other one.
        The stored copy is the one delivered, so its cost is the one booked: an earlier
        settlement at another cost is restated (entry `restate`, spent only).

        One read finds what `settle` would book (an unsettled generation of this seed, the
        latest variation) or else the settled one to restate, and locks it."""
        row = await conn.fetchrow(
            f"SELECT {_GENERATION} FROM generations WHERE job_id = $1 AND image_index = $2"
            " AND seed = $3 ORDER BY status = 'settled', variation DESC LIMIT 1 FOR UPDATE",
            job_id,
            image_index,
            seed,
        )
        if row is None:
            return False
        if row["status"] != "settled":
            await self._book(conn, row, actual, provider)
            return True
        if row["actual_usd"] == actual:
            return False
        delta = actual - row["actual_usd"]
        provider = provider or row["provider"]
        slot = Slot(job_id, image_index, row["variation"])
        await self._settled(conn, slot, actual, provider)
        await self._entry(conn, row["day"], row["user_id"], slot, "restate", 0, delta, provider)
        await self._totals(conn, row["day"], row["user_id"], Decimal(0), delta)
        # Not on the `budget_consumed` counter, which cannot go down; the log line says it.
        log.info(
            "event=cost_restated job_id=%s index=%d from=%s to=%s",
            job_id,
            image_index,
            row["actual_usd"],
            actual,
        )
        return True

    async def release(
        self, conn: asyncpg.Connection, job_id: str, image_index: int | None = None
    ) -> Decimal:
        """Release the outstanding reservations of a job (or one image); the amount released."""
        rows = await conn.fetch(
            "UPDATE generations SET status = 'released', reserved_usd = 0, updated_at = now()"
            " WHERE job_id = $1 AND ($2::integer IS NULL OR image_index = $2)"
            " AND status = 'reserved'"
            " RETURNING image_index, variation, day, user_id, provider,"
            " estimated_usd AS amount",
            job_id,
            image_index,
        )
        total = Decimal(0)
        for row in sorted(rows, key=lambda r: (r["image_index"], r["variation"])):
            slot = Slot(job_id, row["image_index"], row["variation"])
            await self._entry(
                conn,
                row["day"],
                row["user_id"],
                slot,
                "release",
                -row["amount"],
                0,
                row["provider"],
            )
            await self._totals(conn, row["day"], row["user_id"], -row["amount"], Decimal(0))
            total += row["amount"]
        return total

    # --- internals ----------------------------------------------------------------------

    async def _settled(
        self, conn: asyncpg.Connection, slot: Slot, actual: Decimal, provider: str
    ) -> None:
        await conn.execute(
            "UPDATE generations SET status = 'settled', actual_usd = $4, reserved_usd = 0,"
            " provider = $5, updated_at = now()"
            " WHERE job_id = $1 AND image_index = $2 AND variation = $3",
            slot.job_id,
            slot.image_index,
            slot.variation,
            actual,
            provider,
        )

    async def _generation(self, conn: asyncpg.Connection, slot: Slot) -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT day, user_id, reserved_usd, status FROM generations"
            " WHERE job_id = $1 AND image_index = $2 AND variation = $3 FOR UPDATE",
            slot.job_id,
            slot.image_index,
            slot.variation,
        )

    async def _check(
        self, conn: asyncpg.Connection, day: date, user_id: str, tier: UserTier, amount: Decimal
    ) -> Refusal | None:
        """Whether `amount` more fits; locks both day rows like `reserve`."""
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

    async def _entry(
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

    async def _totals(
        self,
        conn: asyncpg.Connection,
        day: date,
        user_id: str,
        reserved_delta: Decimal,
        spent_delta: Decimal,
    ) -> None:
        row = await conn.fetchrow(
            "WITH " + _TOTALS.format(day="$1", user="$2", reserved="$3", spent="$4"),
            day,
            user_id,
            reserved_delta,
            spent_delta,
        )
        await self._after_totals(conn, day, row, reserved_delta + spent_delta)

    async def _after_totals(
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
