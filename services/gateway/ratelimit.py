"""Per-user rate limits by tier, shared by every gateway replica through PostgreSQL.

A sliding-window counter: one row per (user, bucket, fixed window); a request counts in
the current window, and the previous window's count weighs in by how much of it still
overlaps the sliding window. The increment is one atomic upsert, so concurrent requests
on any replica see each other; a refused request takes its count back, so a client that
waits `Retry-After` seconds gets through. Times come from the database's clock, so
replicas with skewed clocks agree.

Buckets: "api" counts every authenticated call (`CurrentUser` applies it); "generate"
counts calls that queue work: add `dependencies=[GenerateLimit]` to such a route.
Limits: `settings.rate_limits[tier][bucket]` requests per `rate_limit_window_s`;
a bucket absent for a tier is unlimited.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, HTTPException, Request, status

from services.gateway.auth import AuthenticatedUser, Principal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int


async def hit(pool: asyncpg.Pool, user_id: str, bucket: str, limit: int, window_s: int) -> Verdict:
    """Count one request against (user, bucket) and say whether it is within `limit`."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 / $3 AS w),"
            " cur AS (INSERT INTO rate_limit_windows (user_id, bucket, window_index, count)"
            "  SELECT $1, $2, floor(w)::bigint, 1 FROM now"
            "  ON CONFLICT (user_id, bucket, window_index)"
            "  DO UPDATE SET count = rate_limit_windows.count + 1"
            "  RETURNING window_index, count)"
            " SELECT cur.window_index, cur.count, now.w,"
            "  COALESCE((SELECT p.count FROM rate_limit_windows p WHERE p.user_id = $1"
            "   AND p.bucket = $2 AND p.window_index = cur.window_index - 1), 0) AS previous"
            " FROM cur, now",
            user_id,
            bucket,
            window_s,
        )
        assert row is not None
        index, current, position, previous = (
            row["window_index"],
            row["count"],
            row["w"],
            row["previous"],
        )
        if current == 1:
            # First request of a new window: older windows no longer matter.
            await conn.execute(
                "DELETE FROM rate_limit_windows WHERE user_id = $1 AND bucket = $2"
                " AND window_index < $3",
                user_id,
                bucket,
                index - 1,
            )
        elapsed = position - index  # fraction of the current window gone by
        estimate = previous * (1.0 - elapsed) + current
        if estimate <= limit:
            return Verdict(True, limit, max(0, math.floor(limit - estimate)), 0)
        await conn.execute(
            "UPDATE rate_limit_windows SET count = count - 1"
            " WHERE user_id = $1 AND bucket = $2 AND window_index = $3",
            user_id,
            bucket,
            index,
        )
    return Verdict(False, limit, 0, _retry_after(previous, current - 1, elapsed, limit, window_s))


def _retry_after(previous: int, current: int, elapsed: float, limit: int, window_s: int) -> int:
    """Seconds until one more request fits, as a fraction of windows from this one's start.

    Within this window it fits once previous * (1 - f) + current + 1 <= limit; if even
    current + 1 exceeds the limit, only the next window helps, where `current` becomes the
    fading previous count: current * (1 - f) + 1 <= limit.
    """
    if current + 1 > limit:
        needed = 1.0 + max(0.0, 1.0 - (limit - 1) / current)
    elif previous:
        needed = 1.0 - (limit - current - 1) / previous
    else:
        needed = elapsed
    return max(1, math.ceil((needed - elapsed) * window_s - 1e-9))  # float noise


async def enforce(request: Request, user: Principal, bucket: str) -> None:
    """Count the request in `bucket`; a 429 with Retry-After when over the tier's limit."""
    state = request.app.state.gateway
    settings = state.settings
    limit = settings.rate_limits.get(user.tier.value, {}).get(bucket)
    if limit is None:
        return
    window = settings.rate_limit_window_s
    verdict = await hit(state.pool, user.user_id, bucket, limit, window)
    if verdict.allowed:
        return
    log.info(
        "event=rate_limited user_id=%s tier=%s bucket=%s limit=%d retry_after_s=%d",
        user.user_id,
        user.tier.value,
        bucket,
        limit,
        verdict.retry_after_s,
    )
    raise HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=(
            f"rate limit exceeded: {limit} {bucket} requests per {window} s for"
            f" {user.tier.value} users; retry in {verdict.retry_after_s} s"
        ),
        headers={"Retry-After": str(verdict.retry_after_s), "X-RateLimit-Limit": str(limit)},
    )


def rate_limit(bucket: str) -> Any:
    """A route dependency counting requests in `bucket` (use in `dependencies=[...]`)."""

    async def _dependency(request: Request, user: AuthenticatedUser) -> None:
        await enforce(request, user, bucket)

    return Depends(_dependency)


GenerateLimit = rate_limit("generate")
"""For routes that queue work: `@router.post(..., dependencies=[GenerateLimit])`."""

RateLimited = Annotated[None, GenerateLimit]
