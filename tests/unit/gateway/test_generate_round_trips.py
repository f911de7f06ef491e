"""What a pack's POST costs PostgreSQL (issue 16): its rate limits in one statement, then one
transaction that reads the character (one statement) and writes the job; a refusal writes
nothing. Statements are counted with asyncpg's query logger on the gateway's pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from tests.unit.gateway.conftest import Gateway


class _LoggedPool:
    """The gateway's pool, noting every statement sent on a connection it lends."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.queries: list[str] = []

    def _log(self, record: Any) -> None:
        self.queries.append(record.query)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self._pool.acquire() as conn:
            conn.add_query_logger(self._log)
            try:
                yield conn
            finally:
                conn.remove_query_logger(self._log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


@asynccontextmanager
async def _logged(gateway: Gateway) -> AsyncIterator[_LoggedPool]:
    pool = gateway.state.pool
    logged = _LoggedPool(pool)
    gateway.state.pool = logged
    try:
        yield logged
    finally:
        gateway.state.pool = pool


async def test_a_pack_post_is_one_rate_limit_statement_and_one_transaction(
    gateway: Gateway, user: str
) -> None:
    character = await gateway.create_character(user)
    async with _logged(gateway) as pool:
        response = await gateway.client.post(
            "/api/generate",
            json={"character_id": character["id"], "image_count": 1},
            headers=gateway.auth(user),
        )
    assert response.status_code == 202, response.text
    queries = [q.split()[0].rstrip(";").upper() for q in pool.queries]
    assert queries == ["WITH", "BEGIN", "SELECT", "INSERT", "COMMIT"], pool.queries
    assert "rate_limit_windows" in pool.queries[0]
    assert "reference_photos" in pool.queries[2]  # the photos come with the character
    assert len(gateway.broker.records(gateway.topics.requests)) == 1


async def test_an_unknown_character_rolls_back_and_sends_nothing(
    gateway: Gateway, user: str
) -> None:
    async with _logged(gateway) as pool:
        response = await gateway.client.post(
            "/api/generate",
            json={"character_id": "no-such-character", "image_count": 1},
            headers=gateway.auth(user),
        )
    assert response.status_code == 404
    assert [q.split()[0].rstrip(";").upper() for q in pool.queries][-1] == "ROLLBACK"
    assert gateway.broker.records(gateway.topics.requests) == []
    jobs = await gateway.state.pool.fetchval("SELECT count(*) FROM jobs WHERE user_id = $1", user)
    assert jobs == 0
    # The refused request still counted against the rate limits, as every request does.
    counted = await gateway.state.pool.fetchval(
        "SELECT sum(count) FROM rate_limit_windows WHERE user_id = $1", user
    )
    assert counted == 2


async def test_a_portrait_post_is_one_rate_limit_statement_and_one_transaction(
    gateway: Gateway, user: str
) -> None:
    character = await gateway.create_character(user)
    async with _logged(gateway) as pool:
        response = await gateway.client.post(
            "/api/v1/images/characters",
            json={"characterId": character["id"], "style": "storybook"},
            headers=gateway.auth(user),
        )
    assert response.status_code == 202, response.text
    verbs = [q.split()[0].rstrip(";").upper() for q in pool.queries]
    # The character, the reference-set note, the estimate and the rows: all in between.
    assert verbs[:2] == ["WITH", "BEGIN"] and verbs[-1] == "COMMIT", pool.queries
    assert verbs.count("BEGIN") == 1 and len(verbs) > 4
    assert "rate_limit_windows" in pool.queries[0]
