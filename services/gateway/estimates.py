"""When a new job will probably be done, from what the read model has seen lately.

Method (deliberately simple, and stated in the API docs):

- per-image time: the median `duration_ms` of the last `SAMPLE` generation_completed
  events of the past `WINDOW` (all users: the GPUs are shared), plus a fixed allowance
  for post-processing and storage; `DEFAULT_IMAGE_S` until anything has been measured.
- work ahead: the images still outstanding in the user's own unfinished jobs (total
  minus completed minus failed), since the scheduler serves a user's jobs in order.
- estimate = now + (work ahead + this job's images) x per-image time / `parallelism`,
  where parallelism is how many of one user's images run at once (1 by default, which
  errs late rather than early).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

SAMPLE = 200
WINDOW = timedelta(hours=6)
DEFAULT_IMAGE_S = 20.0
PIPELINE_OVERHEAD_S = 2.0


@dataclass(frozen=True)
class Estimate:
    per_image_s: float
    images_ahead: int
    images: int
    parallelism: int = 1

    @property
    def seconds(self) -> float:
        return (self.images_ahead + self.images) * self.per_image_s / max(self.parallelism, 1)

    def completion(self, now: datetime | None = None) -> datetime:
        start = now or datetime.now(UTC)
        return (start + timedelta(seconds=round(self.seconds))).replace(microsecond=0)


async def recent_image_seconds(db: asyncpg.Pool | asyncpg.Connection) -> float:
    """Median generation time of recent images (seconds), with the pipeline allowance."""
    median_ms = await db.fetchval(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM ("
        "  SELECT (payload -> 'data' ->> 'duration_ms')::double precision AS ms FROM events"
        "  WHERE type = 'generation_completed' AND created_at > now() - $1::interval"
        "  ORDER BY id DESC LIMIT $2) recent",
        WINDOW,
        SAMPLE,
    )
    if median_ms is None:
        return DEFAULT_IMAGE_S
    return float(median_ms) / 1000.0 + PIPELINE_OVERHEAD_S


async def images_ahead(
    db: asyncpg.Pool | asyncpg.Connection, user_id: str, exclude_job: str | None = None
) -> int:
    """Images still to come in the user's unfinished jobs."""
    ahead = await db.fetchval(
        "SELECT COALESCE(sum(GREATEST(total - completed - failed, 0)), 0) FROM jobs"
        " WHERE user_id = $1 AND finished_at IS NULL"
        " AND status NOT IN ('completed', 'partially_completed', 'failed', 'cancelled')"
        " AND id IS DISTINCT FROM $2",
        user_id,
        exclude_job,
    )
    return int(ahead)


async def estimate(
    db: asyncpg.Pool | asyncpg.Connection,
    user_id: str,
    images: int,
    *,
    exclude_job: str | None = None,
    parallelism: int = 1,
) -> Estimate:
    return Estimate(
        per_image_s=await recent_image_seconds(db),
        images_ahead=await images_ahead(db, user_id, exclude_job),
        images=images,
        parallelism=parallelism,
    )
