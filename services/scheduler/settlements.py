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
from services.scheduler.day_totals import TOTALS, DayTotals, Slot

log = logging.getLogger(__name__)
_GENERATION = (
    "job_id, image_index, variation, day, user_id, reserved_usd, actual_usd, provider, status"
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
        self, conn: asyncpg.Connection, row: asyncpg.Record, actual: Decimal, provider: str
    ) -> None:
        """Settle the (locked) generation `row` at `actual`."""
        provider = provider or row["provider"]
        released = -row["reserved_usd"]
        # The generation, its entry and both day rows in one statement (see `TOTALS`).
        day_row = await conn.fetchrow(
            "WITH settled AS (UPDATE generations SET status = 'settled', actual_usd = $4,"
            " reserved_usd = 0, provider = $5, updated_at = now()"
            " WHERE job_id = $1 AND image_index = $2 AND variation = $3),"
            " entry AS (INSERT INTO ledger_entries (day, user_id, job_id, image_index,"
            " variation, entry, reserved_delta, spent_delta, provider)"
            " VALUES ($6, $7, $1, $2, $3, 'settle', $8, $4, $5)), "
            + TOTALS.format(day="$6", user="$7", reserved="$8", spent="$4"),
            row["job_id"],
            row["image_index"],
            row["variation"],
            actual,
            provider,
            row["day"],
            row["user_id"],
            released,
        )
        await self._totals.after(conn, row["day"], day_row, released + actual)
        instruments().budget_consumed.add(float(actual), {"provider": provider})
