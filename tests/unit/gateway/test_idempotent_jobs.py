"""A crash between a job's commit and the Idempotency-Key's stored answer (or between its
command's publish and the commit) never makes a second job: the retry with the key gets
the same job. On a real PostgreSQL (`database_url`), with the crash injected at the
middleware's fault point or in the publisher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from imagegen.kafka.memory import InMemoryBroker
from schemas.requests import GenerateImages
from tests.unit.gateway.conftest import Gateway
from tests.unit.gateway.factories import queued
from tests.unit.gateway.resources_support import custom_gateway, published

# A claim left pending this long is taken over: short, so that a retry after a crash takes
# it over at once, which is where the old code path ran the route a second time.
PENDING_S = 0.2


class Crash(BaseException):
    """The replica dies here (a BaseException: no handler on the way catches it)."""


async def _crash_at(point: str) -> None:
    if point == "route_returned":
        raise Crash(point)


def _raised(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    error = excinfo.value
    if isinstance(error, BaseExceptionGroup):
        return any(isinstance(e, Crash) for e in error.exceptions)
    return isinstance(error, Crash)


async def _pack(gateway: Gateway, user: str, key: str, character: str) -> Any:
    return await gateway.client.post(
        "/api/generate",
        json={"character_id": character, "image_count": 3},
        headers={**gateway.auth(user), "Idempotency-Key": key},
    )


async def _jobs(gateway: Gateway, user: str) -> list[str]:
    rows = await gateway.state.pool.fetch("SELECT id FROM jobs WHERE user_id = $1", user)
    return [r["id"] for r in rows]


def _commands(gateway: Gateway) -> list[str]:
    return [c.job_id for c in published(gateway) if isinstance(c, GenerateImages)]


async def test_a_crash_after_the_job_committed_replays_the_same_job(
    database_url: str, user: str
) -> None:
    async with custom_gateway(database_url, idempotency_pending_s=PENDING_S) as gateway:
        character = str((await gateway.create_character(user))["id"])
        gateway.app.state.idempotency_fault = _crash_at
        with pytest.raises(BaseException) as crashed:
            await _pack(gateway, user, "pack-1", character)
        assert _raised(crashed), crashed.value
        gateway.app.state.idempotency_fault = None
        [made] = await _jobs(gateway, user)
        await asyncio.sleep(PENDING_S * 2)  # the claim is stale: a retry may take it over

        retry = await _pack(gateway, user, "pack-1", character)

        assert retry.status_code == 202, retry.text
        assert retry.json()["job_id"] == made
        assert retry.headers["idempotent-replayed"] == "true"
        assert await _jobs(gateway, user) == [made]
        assert _commands(gateway) == [made]
        # The answer stored with the job is the one the route gave.
        again = await _pack(gateway, user, "pack-1", character)
        assert again.json() == retry.json()


class _DiesAfterPublishing:
    """A publisher whose process dies once right after the broker took the command, before
    the gateway's transaction commits."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.crashes = 1

    async def publish(
        self, topic: str, key: str | None, value: BaseModel | bytes, headers: Any = None
    ) -> None:
        await self._inner.publish(topic, key, value, headers)
        if self.crashes and isinstance(value, GenerateImages):
            self.crashes -= 1
            raise Crash("after publish")

    async def ping(self, timeout: float) -> None:
        await self._inner.ping(timeout)

    async def close(self) -> None:
        await self._inner.close()


@pytest.mark.parametrize("projected", [False, True], ids=["retry-first", "events-first"])
async def test_a_crash_after_the_command_was_sent_but_before_commit_makes_one_job(
    database_url: str, user: str, projected: bool
) -> None:
    broker = InMemoryBroker()
    publisher = _DiesAfterPublishing(broker.publisher())
    async with custom_gateway(
        database_url, publisher=publisher, broker=broker, idempotency_pending_s=PENDING_S
    ) as gateway:
        character = str((await gateway.create_character(user))["id"])
        with pytest.raises(BaseException) as crashed:
            await _pack(gateway, user, "pack-2", character)
        assert _raised(crashed), crashed.value
        [sent] = _commands(gateway)
        assert await _jobs(gateway, user) == []  # rolled back: the command is out, alone
        if projected:
            # The scheduler ran the command: its events made the job's row here first.
            await gateway.feed(queued(sent, user, 0, 3))
            assert await _jobs(gateway, user) == [sent]
        await asyncio.sleep(PENDING_S * 2)

        retry = await _pack(gateway, user, "pack-2", character)

        assert retry.status_code == 202, retry.text
        # The same job id again: the scheduler ignores a job id it has, so one job.
        assert retry.json()["job_id"] == sent
        assert _commands(gateway) == [sent, sent]
        assert await _jobs(gateway, user) == [sent]
        row = await gateway.state.pool.fetchrow("SELECT kind, total FROM jobs WHERE id = $1", sent)
        assert (row["kind"], row["total"]) == ("pack", 3)


async def test_the_same_key_with_another_body_after_a_failure_is_a_new_job(
    database_url: str, user: str
) -> None:
    broker = InMemoryBroker()
    publisher = _DiesAfterPublishing(broker.publisher())
    async with custom_gateway(
        database_url, publisher=publisher, broker=broker, idempotency_pending_s=PENDING_S
    ) as gateway:
        character = str((await gateway.create_character(user))["id"])
        with pytest.raises(BaseException):
            await _pack(gateway, user, "pack-3", character)
        [sent] = _commands(gateway)
        await asyncio.sleep(PENDING_S * 2)
        other = await gateway.client.post(
            "/api/generate",
            json={"character_id": character, "image_count": 5},
            headers={**gateway.auth(user), "Idempotency-Key": "pack-3"},
        )
        assert other.status_code == 202, other.text
        assert other.json()["job_id"] != sent


async def test_a_crash_after_a_character_committed_replays_the_same_character(
    database_url: str, user: str
) -> None:
    async with custom_gateway(database_url, idempotency_pending_s=PENDING_S) as gateway:

        async def create() -> Any:
            return await gateway.client.post(
                "/api/v1/characters",
                json={"name": "Ivy"},
                headers={**gateway.auth(user), "Idempotency-Key": "ivy-1"},
            )

        async def names() -> list[str]:
            rows = await gateway.state.pool.fetch(
                "SELECT id FROM characters WHERE user_id = $1", user
            )
            return [r["id"] for r in rows]

        gateway.app.state.idempotency_fault = _crash_at
        with pytest.raises(BaseException) as crashed:
            await create()
        assert _raised(crashed), crashed.value
        gateway.app.state.idempotency_fault = None
        [made] = await names()
        await asyncio.sleep(PENDING_S * 2)  # the claim is stale: a retry may take it over

        retry = await create()

        assert retry.status_code == 201, retry.text
        assert retry.json()["id"] == made
        assert retry.headers["idempotent-replayed"] == "true"
        assert await names() == [made]
