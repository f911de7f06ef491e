"""Storage: delete and review commands, against a real PostgreSQL and the in-memory fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from pydantic import BaseModel

from imagegen.blobstore import InMemoryBlobStore
from imagegen.db import create_pool, migrate
from imagegen.events import EventEmitter
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import EVENT_ADAPTER, EventBase, ImageDeleted, ImageReviewed, ImageStored
from schemas.jobs import ImageIdentity, image_id_for
from schemas.requests import DeleteImage, ReviewDecision, ReviewImage
from schemas.topics import TopicNames
from services.storage.handlers import SOURCE, StorageService
from services.storage.lifecycle import ImageLifecycle
from services.storage.migrations import MIGRATIONS
from tests.unit.image_builders import image_identity, processed_image

TOPICS = TopicNames("unit")


@dataclass
class Storage:
    pool: asyncpg.Pool
    blobs: InMemoryBlobStore
    broker: InMemoryBroker
    service: StorageService
    lifecycle: ImageLifecycle

    def events(self) -> list[EventBase]:
        return [EVENT_ADAPTER.validate_json(r.value) for r in self.broker.records(TOPICS.events)]

    async def store(self, job_id: str, version: int = 1, user: str = "u1") -> ImageIdentity:
        image = image_identity(
            job_id=job_id,
            image_id=image_id_for("origin-" + job_id.split("/", maxsplit=1)[0], 0),
            user_id=user,
            character_id="c1",
            version=version,
        )
        msg = await processed_image(
            self.blobs, f"png-{job_id}-{version}".encode(), image=image, style="watercolor"
        )
        await self.service.on_processed_image(_record(TOPICS.images_processed, msg))
        return image


def _record(topic: str, msg: BaseModel) -> Record:
    return Record(topic=topic, partition=0, offset=0, key=None, value=encode(msg))


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[Storage]:
    pool = await create_pool(database_url, "storage")
    try:
        await migrate(pool, "storage", MIGRATIONS)
        broker = InMemoryBroker()
        blobs = InMemoryBlobStore()
        publisher = broker.publisher()
        service = StorageService(pool, blobs, publisher, TOPICS)
        lifecycle = ImageLifecycle(pool, blobs, EventEmitter(publisher, TOPICS.events, SOURCE))
        yield Storage(pool, blobs, broker, service, lifecycle)
    finally:
        await pool.close()


async def test_delete_removes_every_version_and_stays_deleted(storage: Storage) -> None:
    first = await storage.store("j1")
    await storage.store("j1/regen", version=2)
    finals = [k for k in await storage.blobs.list("users/") if first.image_id in k]
    assert len(finals) == 2

    delete = DeleteImage(image_id=first.image_id, user_id="u1")
    await storage.lifecycle.on_request(_record(TOPICS.requests, delete))
    await storage.lifecycle.on_request(_record(TOPICS.requests, delete))  # redelivered

    assert [k for k in await storage.blobs.list("users/") if first.image_id in k] == []
    assert await storage.pool.fetchval("SELECT count(*) FROM images") == 0
    deleted = [e for e in storage.events() if isinstance(e, ImageDeleted)]
    assert {e.id for e in deleted} == {deleted[0].id}  # same event both times
    assert deleted[0].data.versions == [1, 2]

    # A late processed image for the deleted id is not stored again.
    await storage.store("j1/late", version=3)
    assert await storage.pool.fetchval("SELECT count(*) FROM images") == 0
    assert [k for k in await storage.blobs.list("users/") if first.image_id in k] == []
    assert not [e for e in storage.events() if isinstance(e, ImageStored) and e.data.version == 3]


async def test_delete_of_another_users_image_changes_nothing(storage: Storage) -> None:
    image = await storage.store("j2")
    other = DeleteImage(image_id=image.image_id, user_id="intruder")
    await storage.lifecycle.on_request(_record(TOPICS.requests, other))
    assert await storage.pool.fetchval("SELECT count(*) FROM images") == 1
    assert not [e for e in storage.events() if isinstance(e, ImageDeleted)]


async def test_review_records_decision_on_latest_version(storage: Storage) -> None:
    image = await storage.store("j3")
    await storage.store("j3/regen", version=2)
    review = ReviewImage(image_id=image.image_id, user_id="u1", decision=ReviewDecision.REJECTED)
    await storage.lifecycle.on_request(_record(TOPICS.requests, review))
    rows = await storage.pool.fetch(
        "SELECT version, review_status FROM images WHERE image_id = $1 ORDER BY version",
        image.image_id,
    )
    assert [(r["version"], r["review_status"]) for r in rows] == [(1, "pending"), (2, "rejected")]
    reviewed = [e for e in storage.events() if isinstance(e, ImageReviewed)]
    assert len(reviewed) == 1 and reviewed[0].data.version == 2
    assert reviewed[0].data.decision == "rejected"

    intruder = ReviewImage(image_id=image.image_id, user_id="x", decision=ReviewDecision.APPROVED)
    await storage.lifecycle.on_request(_record(TOPICS.requests, intruder))
    assert len([e for e in storage.events() if isinstance(e, ImageReviewed)]) == 1


async def test_stored_event_carries_style_and_story(storage: Storage) -> None:
    await storage.store("j4")
    stored = [e for e in storage.events() if isinstance(e, ImageStored)]
    assert stored[0].data.style == "watercolor" and stored[0].data.prompt == "p"
