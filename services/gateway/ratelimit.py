"""Per-user rate limits by tier, shared by every gateway replica through PostgreSQL.

A sliding-window counter: one row per (user, bucket, fixed window); a request counts in
the current window, and the previous window's count weighs in by how much of it still
overlaps the sliding window. The increment is one atomic upsert, so concurrent requests
on any replica see each other; a refused request takes its count back, so a client that
waits `Retry-After` seconds gets through. Times come from the database's clock, so
replicas with skewed clocks agree. All the buckets a request counts in (a route's own and
"api") are counted in one statement: one round trip, one transaction.

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


# Every bucket of a request in one statement (one round trip): count the request in the
# current window, read the previous window's count, and, at a window's first request, drop
# the windows before the previous one (they no longer matter). $2: the buckets.
_COUNT = (
    "WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 / $3 AS w),"
    " cur AS (INSERT INTO rate_limit_windows (user_id, bucket, window_index, count)"
    "  SELECT $1, b.bucket, floor(now.w)::bigint, 1 FROM now, unnest($2::text[]) AS b (bucket)"
    "  ON CONFLICT (user_id, bucket, window_index)"
    "  DO UPDATE SET count = rate_limit_windows.count + 1"
    "  RETURNING bucket, window_index, count),"
    " old AS (DELETE FROM rate_limit_windows r USING cur WHERE r.user_id = $1"
    "  AND r.bucket = cur.bucket AND cur.count = 1 AND r.window_index < cur.window_index - 1)"
    " SELECT cur.bucket, cur.window_index, cur.count, now.w,"
    "  COALESCE((SELECT p.count FROM rate_limit_windows p WHERE p.user_id = $1"
    "   AND p.bucket = cur.bucket AND p.window_index = cur.window_index - 1), 0) AS previous"
    " FROM cur, now"
)

_TAKE_BACK = (
    "UPDATE rate_limit_windows r SET count = r.count - 1"
    " FROM unnest($2::text[], $3::bigint[]) AS t (bucket, window_index)"
    " WHERE r.user_id = $1 AND r.bucket = t.bucket AND r.window_index = t.window_index"
)


async def hit_many(
    pool: asyncpg.Pool, user_id: str, limits: list[tuple[str, int]], window_s: int
) -> list[tuple[str, Verdict]]:
    """Count one request against each (bucket, limit) of `limits`, checked in that order,
    in one round trip. Up to the first bucket over its limit: those within keep their
    count, that one takes it back, and the buckets after it are not counted (as if they
    were never checked). The verdicts, in order, up to and including the refusal."""
    buckets = [bucket for bucket, _ in limits]
    if len(set(buckets)) != len(buckets):
        raise ValueError(f"a bucket is listed twice: {buckets}")
    async with pool.acquire() as conn:
        rows = await conn.fetch(_COUNT, user_id, buckets, window_s)
        windows = {row["bucket"]: row for row in rows}
        verdicts: list[tuple[str, Verdict]] = []
        for bucket, limit in limits:
            row = windows[bucket]
            verdict = _verdict(
                row["count"], row["previous"], row["w"] - row["window_index"], limit, window_s
            )
            verdicts.append((bucket, verdict))
            if not verdict.allowed:
                break
        allowed = len(verdicts) if verdicts[-1][1].allowed else len(verdicts) - 1
        back = buckets[allowed:]
        if back:
            await conn.execute(
                _TAKE_BACK, user_id, back, [windows[bucket]["window_index"] for bucket in back]
            )
    return verdicts


async def hit(pool: asyncpg.Pool, user_id: str, bucket: str, limit: int, window_s: int) -> Verdict:
    """Count one request against (user, bucket) and say whether it is within `limit`."""
    [(_, verdict)] = await hit_many(pool, user_id, [(bucket, limit)], window_s)
    return verdict


def _verdict(current: int, previous: int, elapsed: float, limit: int, window_s: int) -> Verdict:
    """`elapsed`: the fraction of the current window gone by."""
    estimate = previous * (1.0 - elapsed) + current
    if estimate <= limit:
        return Verdict(True, limit, max(0, math.floor(limit - estimate)), 0)
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


_COUNTED = "rate_limit_buckets"
"""Where a request's state keeps the buckets it has been counted in already."""


async def enforce(request: Request, user: Principal, *buckets: str) -> None:
    """Count the request in each of `buckets` not counted yet, in one round trip; a 429 with
    Retry-After for the first one over the tier's limit."""
    state = request.app.state.gateway
    settings = state.settings
    counted: set[str] = getattr(request.state, _COUNTED, set())
    setattr(request.state, _COUNTED, counted | set(buckets))
    tier_limits = settings.rate_limits.get(user.tier.value, {})
    limits = [
        (bucket, tier_limits[bucket])
        for bucket in dict.fromkeys(buckets)
        if bucket not in counted and bucket in tier_limits
    ]
    if not limits:
        return
    window = settings.rate_limit_window_s
    bucket, verdict = (await hit_many(state.pool, user.user_id, limits, window))[-1]
    if verdict.allowed:
        return
    limit = verdict.limit
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
    """A route dependency counting requests in `bucket` (use in `dependencies=[...]`).

    It counts the "api" bucket too, in the same round trip, before `CurrentUser` would:
    route dependencies run before the endpoint's, so `bucket` is checked first, as when
    each bucket had its own statement, and `CurrentUser` finds "api" counted already."""

    async def _dependency(request: Request, user: AuthenticatedUser) -> None:
        await enforce(request, user, bucket, "api")

    return Depends(_dependency)


GenerateLimit = rate_limit("generate")
"""For routes that queue work: `@router.post(..., dependencies=[GenerateLimit])`."""

RateLimited = Annotated[None, GenerateLimit]
