"""The gateway app against the in-memory broker and blob store and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka import Publisher
from imagegen.kafka.memory import InMemoryBroker
from imagegen.settings import KafkaSettings
from imagegen.stack.postgres import drop_database, ensure_database
from schemas.events import EventBase
from schemas.requests import UserTier
from schemas.topics import TopicNames
from services.gateway.app import create_app
from services.gateway.auth import issue_token
from services.gateway.eventfeed import EventFeed
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState


@pytest.fixture(scope="session")
def gateway_db_url(pg_dsn_base: str) -> Iterator[str]:
    """One fresh database for the session; tests isolate themselves by user id."""
    name = f"gateway_test_{uuid.uuid4().hex[:12]}"
    url = ensure_database(pg_dsn_base, name)
    try:
        yield url
    finally:
        drop_database(pg_dsn_base, name)


@dataclass
class Gateway:
    app: FastAPI
    client: httpx.AsyncClient
    broker: InMemoryBroker
    blobs: InMemoryBlobStore
    settings: GatewaySettings
    _fed: int = field(default=0)

    @property
    def topics(self) -> TopicNames:
        return self.settings.kafka.topics

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.app.state.gateway
        return state

    def use_feed(self, **options: Any) -> EventFeed:
        """A new event feed with `options` (EventFeed's), for the streams and the projection."""
        state = self.state
        feed = EventFeed(state.pool, state.signal, **options)
        state.feed = state.projection.feed = feed
        return feed

    def token(self, user: str, tier: UserTier = UserTier.PAID, ttl: int = 600) -> str:
        return issue_token(self.settings.jwt_secret, user, tier, ttl)

    def auth(self, user: str, tier: UserTier = UserTier.PAID) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, tier)}"}

    async def feed(self, *events: EventBase | bytes, wait: bool = True) -> None:
        """Publish on the events topic (keyed by job id) and wait until all are handled."""
        publisher = self.broker.publisher()
        for event in events:
            key = event.job_id if isinstance(event, EventBase) else None
            await publisher.publish(self.topics.events, key, event)
            self._fed += 1
        if wait:
            await self.drain()

    async def drain(self) -> None:
        """Wait (up to 5 s) until the consumer loop has dealt with everything fed."""
        loop = self.state.consumer_loop
        for _ in range(1000):
            if loop.handled + loop.dead_lettered >= self._fed:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"the projection handled {loop.handled} of {self._fed} events")

    async def create_character(self, user: str, **body: object) -> dict[str, object]:
        response = await self.client.post(
            "/api/v1/characters", json={"name": "Mia", **body}, headers=self.auth(user)
        )
        assert response.status_code == 201, response.text
        result: dict[str, object] = response.json()
        return result

    async def generate(self, user: str, count: int, tier: UserTier = UserTier.PAID) -> str:
        character = await self.create_character(user)
        response = await self.client.post(
            "/api/generate",
            json={"character_id": character["id"], "image_count": count},
            headers=self.auth(user, tier),
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["job_id"]
        return job_id


def gateway_settings(database_url: str) -> GatewaySettings:
    return GatewaySettings(
        env="test",
        database_url=database_url,
        kafka=KafkaSettings(namespace=f"t{uuid.uuid4().hex[:8]}"),
        sse_poll_s=0.5,
        sse_ping_s=5.0,
        consumer_poll_s=0.05,
        shutdown_timeout_s=2.0,
    )


@asynccontextmanager
async def running_gateway(
    database_url: str, publisher: Publisher | None = None, **overrides: object
) -> AsyncIterator[Gateway]:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    settings = gateway_settings(database_url).model_copy(update=overrides)
    app = create_app(
        settings,
        publisher=publisher or broker.publisher(),
        consumer_factory=broker.consumer,
        blob_store=blobs,
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client,
    ):
        yield Gateway(app, client, broker, blobs, settings)


@pytest.fixture
async def gateway(gateway_db_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(gateway_db_url) as gw:
        yield gw


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"
