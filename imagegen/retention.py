"""Age-based pruning of bookkeeping tables that would otherwise grow for ever.

Idempotency records (applied event ids, cancelled job ids, scored variations, expired
idempotency keys) only matter while a copy of what they guard can still arrive. An
`AgePruner` deletes the rows whose timestamp column is older than `keep`, oldest first,
in batches (each its own short transaction, so live writers never wait long), every
`interval_s`, until stopped. Instances of a service prune side by side: `SKIP LOCKED`
hands each a different batch, and no row is deleted twice.

`REPLAY_WINDOW` is how long a copy of a Kafka message can come back at worst, from the
topic registry: the longest-kept topic (the events topic, 30 days) plus a segment (Kafka
deletes whole segments, so a record can outlive retention.ms by segment.ms, 7 days), and
before that a dead letter (kept 7 days, plus a segment) that `imagegen dlq redrive` puts
back: (30 + 7) + (7 + 7) = 51 days.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg

from schemas.topics import TopicSpec, registry

log = logging.getLogger(__name__)

SEGMENT_SLACK = timedelta(days=7)
"""Kafka's default segment.ms: how long a record can outlive its topic's retention.ms."""


def replay_window(specs: list[TopicSpec] | None = None) -> timedelta:
    """The worst age of a message copy that can still arrive (see the module docstring)."""
    kept = {
        s.role: timedelta(milliseconds=int(s.configs["retention.ms"]))
        for s in (registry() if specs is None else specs)
    }
    return max(kept.values()) + SEGMENT_SLACK + kept["deadletter"] + SEGMENT_SLACK


REPLAY_WINDOW = replay_window()
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def _batch_sql(table: str, column: str) -> str:
    for name in (table, column):
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain SQL identifier: {name!r}")
    # Oldest first by the column's index; SKIP LOCKED lets instances prune side by side.
    return (
        f"WITH gone AS (DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f"   SELECT ctid FROM {table} WHERE {column} < $1"
        f"   ORDER BY {column} LIMIT $2 FOR UPDATE SKIP LOCKED)) RETURNING 1)"
        " SELECT count(*) FROM gone"
    )


async def prune_batch(
    pool: asyncpg.Pool, table: str, column: str, cutoff: datetime, batch_size: int
) -> int:
    """Delete at most `batch_size` rows of `table` whose `column` is before `cutoff`; how many."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    deleted: int = await pool.fetchval(_batch_sql(table, column), cutoff, batch_size)
    return deleted


class AgePruner:
    """Prunes `table` by `column` every `interval_s` until `stop()`; database errors wait a
    round (the next one catches up)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        table: str,
        column: str,
        *,
        keep: timedelta,
        batch_size: int = 5000,
        interval_s: float = 3600.0,
    ) -> None:
        if batch_size < 1 or keep < timedelta(0) or interval_s <= 0:
            raise ValueError(
                f"pruning {table} needs a retention of at least 0 and a positive batch size"
                f" and interval, not {keep}, {batch_size} and {interval_s} s"
            )
        _batch_sql(table, column)  # names checked now, not at the first round
        self.table = table
        self._pool = pool
        self._column = column
        self._keep = keep
        self._batch_size = batch_size
        self._interval = interval_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def prune(self, now: datetime | None = None) -> int:
        """Delete every row older than the retention, batch by batch (stopping early on
        `stop()`); how many went."""
        cutoff = (now or datetime.now(UTC)) - self._keep
        total = 0
        while not self._stopping.is_set():
            deleted = await prune_batch(
                self._pool, self.table, self._column, cutoff, self._batch_size
            )
            total += deleted
            if deleted < self._batch_size:
                break
        return total

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                pruned = await self.prune()
                if pruned:
                    log.info("event=rows_pruned table=%s rows=%d", self.table, pruned)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("event=prune_retry table=%s error=%r", self.table, str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)


@contextlib.asynccontextmanager
async def pruning(*pruners: AgePruner) -> AsyncIterator[None]:
    """Run `pruners` in the background for the body's duration; stopped and awaited after."""
    tasks = [asyncio.create_task(p.run(), name=f"prune-{p.table}") for p in pruners]
    try:
        yield
    finally:
        for pruner in pruners:
            pruner.stop()
        await asyncio.gather(*tasks)
