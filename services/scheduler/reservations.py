"""Reservations: a job's estimate held all-or-nothing, moved on failover, released.

A job is admitted only if the estimate of every image fits both the global budget and the
user's limit (`reserve`); a failover to a dearer offer reserves the difference the same
way (`adjust`); a failed or cancelled image gives its reservation back (`release`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import asyncpg

from schemas.requests import UserTier
from services.scheduler.day_totals import TOTALS, DayTotals, Refusal, Slot
from services.scheduler.settings import SchedulerSettings


@dataclass(frozen=True)
class Hold:
    """A reservation to make."""

    slot: Slot
    seed: int
    provider: str
    model: str
    amount: Decimal


class Reservations:
    """Holds money for generations before they run."""

    def __init__(self, settings: SchedulerSettings, totals: DayTotals) -> None:
        self._settings = settings
        self._totals = totals

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
        # Both day rows created if need be and locked, the day's first (the user's upsert
        # reads from the day's, so it runs after it), in one statement.
        rows = await conn.fetchrow(
            "WITH d AS (INSERT INTO budget_days (day, budget_usd) VALUES ($1, $2)"
            " ON CONFLICT (day) DO UPDATE SET budget_usd = EXCLUDED.budget_usd"
            " RETURNING day, reserved_usd + spent_usd AS committed),"
            " u AS (INSERT INTO user_budget_days (day, user_id) SELECT day, $3 FROM d"
            " ON CONFLICT (day, user_id) DO UPDATE SET user_id = EXCLUDED.user_id"
            " RETURNING reserved_usd + spent_usd AS committed)"
            " SELECT d.committed AS global_committed, u.committed AS user_committed"
            " FROM d, u",
            day,
            budget,
            user_id,
        )
        committed = rows["global_committed"]
        if committed + amount > budget:
            return Refusal(
                "budget_exceeded",
                f"the daily budget of ${budget:.2f} for {day.isoformat()} is used up"
                f" (${committed:.2f} committed; this job needs ${amount:.2f})",
            )
        user_committed = rows["user_committed"]
        if user_committed + amount > limit:
            return Refusal(
                "user_budget_exceeded",
                f"your daily limit of ${limit:.2f} ({tier.value} tier) for {day.isoformat()}"
                f" is used up (${user_committed:.2f} committed; this job needs ${amount:.2f})",
            )
        if holds:
            # Every hold's generation and its entry, in hold order, and both day rows' totals
            # (see `TOTALS`), in one statement.
            totals = await conn.fetchrow(
                "WITH h AS (SELECT * FROM unnest($3::text[], $4::int[], $5::int[],"
                " $6::bigint[], $7::text[], $8::text[], $9::numeric[])"
                " WITH ORDINALITY AS h(job_id, image_index, variation, seed, provider, model,"
                " amount, n)),"
                " g AS (INSERT INTO generations (job_id, image_index, variation, seed, day,"
                " user_id, provider, model, estimated_usd, reserved_usd, status)"
                " SELECT job_id, image_index, variation, seed, $1, $2, provider, model,"
                " amount, amount, 'reserved' FROM h ORDER BY n),"
                " e AS (INSERT INTO ledger_entries (day, user_id, job_id, image_index, variation,"
                " entry, reserved_delta, spent_delta, provider)"
                " SELECT $1, $2, job_id, image_index, variation, 'reserve', amount, 0, provider"
                " FROM h ORDER BY n), "
                + TOTALS.format(day="$1", user="$2", reserved="$10::numeric", spent="0"),
                day,
                user_id,
                [h.slot.job_id for h in holds],
                [h.slot.image_index for h in holds],
                [h.slot.variation for h in holds],
                [h.seed for h in holds],
                [h.provider for h in holds],
                [h.model for h in holds],
                [h.amount for h in holds],
                amount,
            )
            await self._totals.after(conn, day, totals, amount)
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
        row = await conn.fetchrow(
            "SELECT day, user_id, reserved_usd, status FROM generations"
            " WHERE job_id = $1 AND image_index = $2 AND variation = $3 FOR UPDATE",
            slot.job_id,
            slot.image_index,
            slot.variation,
        )
        if row is None or row["status"] != "reserved":
            return None
        delta = amount - row["reserved_usd"]
        if delta > 0:
            refusal = await self._totals.check(conn, row["day"], row["user_id"], tier, delta)
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
            await self._totals.entry(
                conn, row["day"], row["user_id"], slot, "adjust", delta, 0, provider
            )
            await self._totals.add(conn, row["day"], row["user_id"], delta, Decimal(0))
        return None

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
            await self._totals.entry(
                conn,
                row["day"],
                row["user_id"],
                slot,
                "release",
                -row["amount"],
                0,
                row["provider"],
            )
            await self._totals.add(conn, row["day"], row["user_id"], -row["amount"], Decimal(0))
            total += row["amount"]
        return total
