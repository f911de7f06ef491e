"""Settlements: an image's actual cost booked against its reservation.

The generator's actual cost settles a reservation (spent += actual, reserved -= estimate).
A cost reported after its reservation was released (an image that finished while its job
was being cancelled) is still spent: money is counted where it went. When an attempt ran
twice, the copy that was stored sets the cost (`settle_stored`).
"""

from __future__ import annotations

import logging
from decimal import Decimal

import asyncpg

from imagegen.metrics import instruments
from services.scheduler.day_totals import TOTALS_CTES, DayTotals, Slot

log = logging.getLogger(__name__)
# The generation a stored copy of seed `{seed}` settles or restates, locked, as one value
# (the `generations` row type).
STORED_COPY = (
    "SELECT g FROM generations g WHERE job_id = {job} AND image_index = {index}"
    " AND seed = {seed} ORDER BY status = 'settled', variation DESC LIMIT 1 FOR UPDATE"
)
# Which generation a settlement books (`$3` is the key): the latest unsettled variation of a
# seed (any seed when NULL), or one given variation that is not settled yet.
_UNSETTLED_OF_SEED = (
    "status <> 'settled' AND ($3::bigint IS NULL OR seed = $3) ORDER BY variation DESC LIMIT 1"
)
_UNSETTLED_VARIATION = "status <> 'settled' AND variation = $3"
# The pick locked first (then the day row, then the user's: the order every change takes),
# its settlement, its entry and both day rows; the reservation it held and the day's totals
# come back. Nothing when the pick finds nothing.
_SETTLE = (
    "WITH g AS MATERIALIZED (SELECT job_id, image_index, variation, day, user_id,"
    " reserved_usd, coalesce(nullif($5::text, ''), provider) AS provider FROM generations"
    " WHERE job_id = $1 AND image_index = $2 AND {pick} FOR UPDATE),"
    " settled AS (UPDATE generations s SET status = 'settled', actual_usd = $4,"
    " reserved_usd = 0, provider = g.provider, updated_at = now() FROM g"
    " WHERE s.job_id = g.job_id AND s.image_index = g.image_index"
    " AND s.variation = g.variation),"
    " entry AS (INSERT INTO ledger_entries (day, user_id, job_id, image_index, variation,"
    " entry, reserved_delta, spent_delta, provider) SELECT day, user_id, job_id, image_index,"
    " variation, 'settle', -reserved_usd, $4, provider FROM g), "
    + TOTALS_CTES.format(
        day="(SELECT day FROM g)",
        user="(SELECT user_id FROM g)",
        reserved="(SELECT -reserved_usd FROM g)",
        spent="$4",
    )
    .replace("{", "{{")
    .replace("}", "}}")
    + " SELECT g.day, g.reserved_usd AS held, g.provider, d.budget_usd, d.reserved_usd,"
    " d.spent_usd, d.alerted FROM g LEFT JOIN day_totals d ON true"
)


class Settlements:
    """Books what images actually cost."""

    def __init__(self, totals: DayTotals) -> None:
        self._totals = totals

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
        return await self._book(
            conn, job_id, image_index, _UNSETTLED_OF_SEED, seed, actual, provider
        )

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
        latest variation) or else the settled one to restate, and locks it (`STORED_COPY`,
        which a caller may fold into a read of its own and hand to `settle_stored_copy`)."""
        row = await conn.fetchval(
            STORED_COPY.format(job="$1", index="$2", seed="$3"), job_id, image_index, seed
        )
        return await self.settle_stored_copy(conn, row, actual, provider)

    async def settle_stored_copy(
        self,
        conn: asyncpg.Connection,
        row: asyncpg.Record | None,
        actual: Decimal,
        provider: str,
    ) -> bool:
        """`settle_stored` with the generation `STORED_COPY` found (and locked) given."""
        if row is None:
            return False
        job_id: str = row["job_id"]
        image_index: int = row["image_index"]
        if row["status"] != "settled":
            return await self._book(
                conn, job_id, image_index, _UNSETTLED_VARIATION, row["variation"], actual, provider
            )
        if row["actual_usd"] == actual:
            return False
        delta = actual - row["actual_usd"]
        provider = provider or row["provider"]
        slot = Slot(job_id, image_index, row["variation"])
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
        await self._totals.entry(
            conn, row["day"], row["user_id"], slot, "restate", 0, delta, provider
        )
        await self._totals.add(conn, row["day"], row["user_id"], Decimal(0), delta)
        # Not on the `budget_consumed` counter, which cannot go down; the log line says it.
        log.info(
            "event=cost_restated job_id=%s index=%d from=%s to=%s",
            job_id,
            image_index,
            row["actual_usd"],
            actual,
        )
        return True

    async def _book(
        self,
        conn: asyncpg.Connection,
        job_id: str,
        image_index: int,
        pick: str,
        key: int | None,
        actual: Decimal,
        provider: str,
    ) -> bool:
        """Settle the generation that `pick` (with `key` as `$3`) finds at `actual`: it is
        locked, settled, its entry written and both day rows moved in one statement."""
        row = await conn.fetchrow(
            _SETTLE.format(pick=pick), job_id, image_index, key, actual, provider
        )
        if row is None:
            return False
        held: Decimal = row["held"]
        # No day row (never so for a reservation made here): no totals to raise alerts on.
        totals = row if row["budget_usd"] is not None else None
        await self._totals.after(conn, row["day"], totals, actual - held)
        instruments().budget_consumed.add(float(actual), {"provider": row["provider"]})
        return True
