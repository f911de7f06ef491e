"""PostgreSQL round trips and transactions of the gateway's event projection, per event.

Projects a small pack's events (queued, started, one progress, stored per image, then
pack_completed) through `services.gateway.projection.Projection` on a PostgreSQL server of
its own, with the pool the gateway makes (`imagegen.db.create_pool`), counting every
statement its connections send (BEGIN and COMMIT, and the pool's reset query on release,
included): once an event at a time (the consumer's handler for one record), and once as
one batch (what the consumer loop hands over when the events arrived together), where the
code has a batch handler.

Run from the root of the tree to measure (an older checkout works too):

    .venv/bin/python bench/projection_statements.py [--images 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path.cwd()))

from _common import bench_postgres

from imagegen import db
from imagegen.kafka import Record, encode
from schemas.events import EventBase, JobStatus
from services.gateway.migrations import MIGRATIONS, SCHEMA
from services.gateway.projection import Projection
from tests.unit.gateway import factories as ev


class Counting(asyncpg.Connection):  # type: ignore[misc]
    """A connection that counts what it sends: statements, and transactions begun."""

    statements = 0
    transactions = 0

    async def execute(self, query: str, *args: Any, **kw: Any) -> Any:
        Counting.statements += 1
        if query.strip().upper().startswith("BEGIN"):
            Counting.transactions += 1
        return await super().execute(query, *args, **kw)

    async def executemany(self, *args: Any, **kw: Any) -> Any:
        Counting.statements += 1  # one pipelined round trip
        return await super().executemany(*args, **kw)

    async def fetch(self, *args: Any, **kw: Any) -> Any:
        Counting.statements += 1
        return await super().fetch(*args, **kw)

    async def fetchval(self, *args: Any, **kw: Any) -> Any:
        Counting.statements += 1
        return await super().fetchval(*args, **kw)

    async def fetchrow(self, *args: Any, **kw: Any) -> Any:
        Counting.statements += 1
        return await super().fetchrow(*args, **kw)


class Quiet:
    def notify(self, user_id: str) -> None:
        pass


def pack(images: int) -> list[EventBase]:
    job, user = f"job-{uuid.uuid4().hex[:8]}", "user-1"
    events: list[EventBase] = [ev.queued(job, user, i, images) for i in range(images)]
    for i in range(images):
        events += [ev.started(job, user, i), ev.progress(job, user, i, 1), ev.stored(job, user, i)]
    events.append(ev.pack_completed(job, user, images, images, 0, JobStatus.COMPLETED))
    return events


def record(event: EventBase, offset: int) -> Record:
    return Record("events", 0, offset, event.job_id, encode(event))


async def measure(port: int, images: int) -> dict[str, Any]:
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    real_create_pool = asyncpg.create_pool

    def counting_pool(*args: Any, **kw: Any) -> Any:
        return real_create_pool(*args, connection_class=Counting, **kw)

    asyncpg.create_pool = counting_pool  # every pool db.create_pool makes counts
    pool = await db.create_pool(dsn, SCHEMA)
    try:
        await db.migrate(pool, SCHEMA, MIGRATIONS)
        projection = Projection(pool, Quiet())  # type: ignore[arg-type]
        out: dict[str, Any] = {"images": images}
        one = pack(images)
        Counting.statements = Counting.transactions = 0
        for n, event in enumerate(one):
            await projection.handle(record(event, n))
        out["one_at_a_time"] = _per(len(one), images)
        if hasattr(projection, "handle_batch"):
            batch = pack(images)
            Counting.statements = Counting.transactions = 0
            await projection.handle_batch([record(e, n) for n, e in enumerate(batch)])
            out["one_batch"] = _per(len(batch), images)
        return out
    finally:
        await pool.close()
        asyncpg.create_pool = real_create_pool


def _per(events: int, images: int) -> dict[str, Any]:
    return {
        "events": events,
        "statements": Counting.statements,
        "transactions": Counting.transactions,
        "statements_per_event": round(Counting.statements / events, 2),
        "statements_per_image": round(Counting.statements / images, 1),
        "transactions_per_image": round(Counting.transactions / images, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="projection-") as tmp,
        bench_postgres(Path(tmp)) as port,
    ):
        result = asyncio.run(measure(port or 5432, args.images))
    for mode in ("one_at_a_time", "one_batch"):
        if mode in result:
            print(f"{mode}: {result[mode]}")


if __name__ == "__main__":
    main()
