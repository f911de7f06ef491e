"""Where a job waits: its position in its tier's queue and a live wait estimate (AC-4).

The queue is the tier's topic (`jobs.<tier>`): per-image messages served in order. The read
model knows each dispatched image's tier (from generation_queued) and whether it has
started, so a job's position is 1 + the images of its tier queued before its first image
still waiting, and the wait is those images x the recent per-image time (estimates.py)
divided by how many images of the tier run at once right now (the generators serving it,
as observed: at least 1, so an idle tier errs late). A job none of whose images waits in
a queue (not dispatched yet, all running, or finished) has no queue status.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from services.gateway.estimates import recent_image_seconds
from services.gateway.models_images import QueueStatus

_POSITION = (
    "WITH mine AS ("
    "  SELECT tier, min(created_at) AS first FROM images"
    "  WHERE job_id = $1 AND status = 'queued' AND tier IS NOT NULL"
    "  GROUP BY tier ORDER BY first LIMIT 1)"
    " SELECT mine.tier, (SELECT count(*) FROM images i WHERE i.tier = mine.tier"
    "  AND i.status = 'queued' AND i.created_at < mine.first) AS ahead,"
    " (SELECT count(*) FROM images g WHERE g.tier = mine.tier"
    "  AND g.status = 'generating') AS running FROM mine"
)


async def queue_status(db: asyncpg.Pool | asyncpg.Connection, job_id: str) -> QueueStatus | None:
    row = await db.fetchrow(_POSITION, job_id)
    if row is None:
        return None
    ahead = int(row["ahead"])
    per_image = await recent_image_seconds(db)
    at_once = max(int(row["running"]), 1)
    wait = round(ahead * per_image / at_once)
    start = (datetime.now(UTC) + timedelta(seconds=wait)).replace(microsecond=0)
    return QueueStatus(
        tier=row["tier"],
        position=ahead + 1,
        images_ahead=ahead,
        estimated_wait_seconds=wait,
        estimated_start_time=start,
    )
