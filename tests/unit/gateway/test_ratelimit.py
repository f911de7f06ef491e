from __future__ import annotations

import asyncpg
import pytest

from schemas.requests import UserTier
from services.gateway.ratelimit import _retry_after, hit, hit_many
from tests.unit.gateway.resources_support import custom_gateway

LIMITS = {"paid": {"api": 5, "generate": 2}, "free": {"api": 3}}


async def test_over_the_limit_is_429_with_retry_after_per_user_and_tier(
    gateway_db_url: str, user: str
) -> None:
    async with custom_gateway(gateway_db_url, rate_limits=LIMITS, rate_limit_window_s=3600) as gw:
        free = gw.auth(user, UserTier.FREE)
        codes = [
            (await gw.client.get("/api/v1/characters", headers=free)).status_code for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        refused = await gw.client.get("/api/v1/characters", headers=free)
        assert refused.status_code == 429
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2 * 3600
        assert "rate limit exceeded" in refused.json()["detail"]
        assert "free" in refused.json()["detail"]
        # Another user, and the same user on another tier's token, have their own budget.
        other = await gw.client.get("/api/v1/characters", headers=gw.auth("o-" + user))
        assert other.status_code == 200
        # Unauthenticated requests are 401, never counted as someone's.
        assert (await gw.client.get("/api/v1/characters")).status_code == 401


async def test_the_generate_bucket_limits_work_queuing_routes(
    gateway_db_url: str, user: str
) -> None:
    async with custom_gateway(gateway_db_url, rate_limits=LIMITS, rate_limit_window_s=3600) as gw:
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-set"
        assert (await gw.client.post(path, headers=gw.auth(user))).status_code == 202
        assert (await gw.client.post(path, headers=gw.auth(user))).status_code == 409  # building
        third = await gw.client.post(path, headers=gw.auth(user))
        assert third.status_code == 429
        assert "generate" in third.json()["detail"]


async def test_limits_are_shared_across_replicas(gateway_db_url: str, user: str) -> None:
    async with (
        custom_gateway(gateway_db_url, rate_limits=LIMITS, rate_limit_window_s=3600) as a,
        custom_gateway(gateway_db_url, rate_limits=LIMITS, rate_limit_window_s=3600) as b,
    ):
        headers = a.auth(user, UserTier.FREE)
        codes = []
        for gw in (a, b, a, b):
            codes.append((await gw.client.get("/api/v1/characters", headers=headers)).status_code)
        assert codes == [200, 200, 200, 429]


async def test_refused_requests_do_not_count(gateway_db_url: str, user: str) -> None:
    async with custom_gateway(gateway_db_url) as gw:
        pool = gw.state.pool
        verdicts = [await hit(pool, user, "t", 2, 3600) for _ in range(5)]
        assert [v.allowed for v in verdicts] == [True, True, False, False, False]
        count = await pool.fetchval(
            "SELECT sum(count) FROM rate_limit_windows WHERE user_id = $1 AND bucket = 't'", user
        )
        assert count == 2


def test_retry_after_waits_for_the_previous_window_to_fade() -> None:
    # 10 per 60 s; the previous window had 20, this one none, a quarter through: one more
    # fits once 20 * (1 - f) + 1 <= 10, at f = 0.55, i.e. 18 s from now.
    assert _retry_after(20, 0, 0.25, 10, 60) == 18
    # This window alone is full (10): in the next one 10 * (1 - f) + 1 <= 10 at f = 0.1.
    assert _retry_after(0, 10, 0.5, 10, 60) == 36
    assert _retry_after(0, 0, 0.99, 10, 60) == 1


async def _counts(pool: asyncpg.Pool, user: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT bucket, sum(count)::int AS n FROM rate_limit_windows WHERE user_id = $1"
        " GROUP BY bucket",
        user,
    )
    return {row["bucket"]: row["n"] for row in rows}


async def test_a_work_queuing_route_counts_both_buckets_once(
    gateway_db_url: str, user: str
) -> None:
    limits = {"paid": {"api": 100, "generate": 2}}
    async with custom_gateway(gateway_db_url, rate_limits=limits, rate_limit_window_s=3600) as gw:
        character = await gw.create_character(user)  # an "api" request
        body = {"character_id": character["id"], "image_count": 1}
        codes = [
            (await gw.client.post("/api/generate", json=body, headers=gw.auth(user))).status_code
            for _ in range(3)
        ]
        assert codes == [202, 202, 429]
        # Counted once each in "api" (not twice: `CurrentUser` finds it counted); the
        # refused third takes its "generate" back and was never counted in "api".
        assert await _counts(gw.state.pool, user) == {"api": 3, "generate": 2}


async def test_over_the_api_limit_a_work_queuing_route_keeps_its_generate_count(
    gateway_db_url: str, user: str
) -> None:
    limits = {"paid": {"api": 2, "generate": 10}}
    async with custom_gateway(gateway_db_url, rate_limits=limits, rate_limit_window_s=3600) as gw:
        character = await gw.create_character(user)
        body = {"character_id": character["id"], "image_count": 1}
        assert (
            await gw.client.post("/api/generate", json=body, headers=gw.auth(user))
        ).status_code == 202
        refused = await gw.client.post("/api/generate", json=body, headers=gw.auth(user))
        assert refused.status_code == 429
        assert "2 api requests" in refused.json()["detail"]
        assert refused.headers["x-ratelimit-limit"] == "2"
        assert 1 <= int(refused.headers["retry-after"]) <= 2 * 3600
        # As when each bucket had its own statement: "generate" (checked first) keeps its
        # count, "api" takes its own back.
        assert await _counts(gw.state.pool, user) == {"api": 2, "generate": 2}
        assert len(gw.broker.records(gw.topics.requests)) == 1


async def test_hit_many_stops_at_the_first_refusal(gateway_db_url: str, user: str) -> None:
    async with custom_gateway(gateway_db_url) as gw:
        pool = gw.state.pool
        limits = [("a", 5), ("b", 1), ("c", 5)]
        first = await hit_many(pool, user, limits, 3600)
        assert [(bucket, v.allowed) for bucket, v in first] == [
            ("a", True),
            ("b", True),
            ("c", True),
        ]
        second = await hit_many(pool, user, limits, 3600)
        assert [(bucket, v.allowed) for bucket, v in second] == [("a", True), ("b", False)]
        assert second[-1][1].retry_after_s >= 1
        assert await _counts(pool, user) == {"a": 2, "b": 1, "c": 1}
        with pytest.raises(ValueError, match="listed twice"):
            await hit_many(pool, user, [("a", 1), ("a", 1)], 3600)
