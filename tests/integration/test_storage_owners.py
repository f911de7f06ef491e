"""Deleting characters and stories, and cleaning up after them, on real SeaweedFS and
PostgreSQL: exactly that owner's objects and rows go, nothing else."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import pytest
from pydantic import BaseModel, SecretStr

from imagegen.blobstore import S3BlobStore, put_staging
from imagegen.cli import main as cli_main
from imagegen.db import create_pool, migrate
from imagegen.events import EventEmitter
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from imagegen.settings import S3Settings
from imagegen.stack.s3 import ensure_bucket
from schemas.events import EVENT_ADAPTER, ImageDeleted, ImageStored
from schemas.images import GenerationRecord, ProcessedImage, Rendition
from schemas.jobs import ImageIdentity
from schemas.requests import DeleteCharacter, DeleteStory, JobKind
from schemas.topics import TopicNames
from services.storage.cleanup import cleanup
from services.storage.handlers import SOURCE, StorageService
from services.storage.lifecycle import ImageLifecycle
from services.storage.migrations import MIGRATIONS
from tests.fixtures.servers import S3Info

TOPICS = TopicNames("it")


@dataclass
class Storage:
    pool: asyncpg.Pool
    blobs: S3BlobStore
    broker: InMemoryBroker
    service: StorageService
    lifecycle: ImageLifecycle
    s3: S3Settings
    database_url: str

    async def store(
        self,
        image_id: str,
        *,
        user: str = "u1",
        character: str = "c1",
        story: str | None = None,
        page: int | None = None,
        version: int = 1,
        kind: JobKind = JobKind.PACK,
    ) -> ImageIdentity:
        image = ImageIdentity(
            job_id=f"job-{image_id}",
            image_id=image_id,
            image_index=0,
            image_count=1,
            user_id=user,
            character_id=character,
            story_id=story,
            page_number=page,
            version=version,
            kind=kind,
        )
        renditions = []
        for name, fmt in (("original", "png"), ("display", "jpeg"), ("thumbnail", "webp")):
            body = f"{name}:{image_id}:{version}:{uuid.uuid4()}".encode()
            blob = await put_staging(self.blobs, body, f"image/{fmt}")
            renditions.append(Rendition(name=name, blob=blob, width=8, height=8, format=fmt))
        msg = ProcessedImage(
            image=image,
            renditions=renditions,
            record=GenerationRecord(
                backend="b", model="m", seed=1, steps=1, guidance=1.0, prompt="p", width=8, height=8
            ),
            provider="fake",
            cost_usd=0.01,
            face_embedding=[0.1, 0.2] if kind == JobKind.REFERENCE else None,
            face_encoder="test",
        )
        await self.service.on_processed_image(_record(msg))
        return image

    async def request(self, command: BaseModel) -> None:
        await self.lifecycle.on_request(_record(command))

    async def rows(self) -> set[tuple[str, int]]:
        rows = await self.pool.fetch("SELECT image_id, version FROM images")
        return {(r["image_id"], r["version"]) for r in rows}

    def deleted(self) -> list[ImageDeleted]:
        events = [EVENT_ADAPTER.validate_json(r.value) for r in self.broker.records(TOPICS.events)]
        return [e for e in events if isinstance(e, ImageDeleted)]


def _record(msg: BaseModel) -> Record:
    return Record(topic="t", partition=0, offset=0, key=None, value=encode(msg))


@pytest.fixture
async def storage(seaweed: S3Info, database_url: str) -> AsyncIterator[Storage]:
    bucket = f"owners-{uuid.uuid4().hex[:10]}"
    ensure_bucket(seaweed.endpoint, bucket, seaweed.access_key, seaweed.secret_key, seaweed.region)
    settings = S3Settings(
        endpoint=seaweed.endpoint,
        bucket=bucket,
        region=seaweed.region,
        access_key=SecretStr(seaweed.access_key),
        secret_key=SecretStr(seaweed.secret_key),
    )
    pool = await create_pool(database_url, "storage")
    try:
        await migrate(pool, "storage", MIGRATIONS)
        async with S3BlobStore(settings) as blobs:
            broker = InMemoryBroker()
            publisher = broker.publisher()
            service = StorageService(pool, blobs, publisher, TOPICS)
            lifecycle = ImageLifecycle(pool, blobs, EventEmitter(publisher, TOPICS.events, SOURCE))
            yield Storage(pool, blobs, broker, service, lifecycle, settings, database_url)
    finally:
        await pool.close()


async def _seed(storage: Storage) -> None:
    """u1 owns characters c1, c2 and stories s1, s2 (c1 is on s1's pages); u2 has a c1 too."""
    await storage.store("c1-ref", kind=JobKind.REFERENCE)
    await storage.store("c1-pack")
    await storage.store("c1-pack", version=2)
    await storage.store("c1-story-portrait", story="s1")  # a story's portrait: c1's
    await storage.store("c2-pack", character="c2")
    await storage.store("s1-p1", story="s1", page=1)
    await storage.store("s1-p2", story="s1", page=2, version=2)
    await storage.store("s2-p1", story="s2", page=1, character="c2")
    await storage.store("u2-c1", user="u2")


async def test_delete_character_removes_exactly_its_images(storage: Storage) -> None:
    await _seed(storage)
    before = set(await storage.blobs.list("users/"))
    ours = {k for k in before if k.startswith("users/u1/characters/c1/")}
    assert len(ours) == 4 * 3
    staging_before = set(await storage.blobs.list("staging/"))

    delete = DeleteCharacter(character_id="c1", user_id="u1")
    await storage.request(delete)
    assert set(await storage.blobs.list("users/")) == before - ours
    assert await storage.rows() == {
        ("c2-pack", 1),
        ("s1-p1", 1),
        ("s1-p2", 2),
        ("s2-p1", 1),
        ("u2-c1", 1),
    }
    assert await storage.pool.fetchval("SELECT count(*) FROM character_references") == 0
    first = {(e.data.image_id, tuple(e.data.versions), e.id) for e in storage.deleted()}
    assert {(i, v) for i, v, _ in first} == {
        ("c1-ref", (1,)),
        ("c1-pack", (1, 2)),
        ("c1-story-portrait", (1,)),
    }

    await storage.request(delete)  # redelivered: the same events again, nothing else
    again = {(e.data.image_id, tuple(e.data.versions), e.id) for e in storage.deleted()}
    assert again == first
    assert set(await storage.blobs.list("users/")) == before - ours

    # A late image of the deleted character is not stored; its staged bytes go.
    late = await storage.store("c1-late")
    assert ("c1-late", 1) not in await storage.rows()
    assert not [k for k in await storage.blobs.list("users/") if "c1-late" in k]
    assert set(await storage.blobs.list("staging/")) == staging_before
    assert ("c1-late", (1,)) in {
        (e.data.image_id, tuple(e.data.versions)) for e in storage.deleted()
    }
    stored = [
        e
        for e in (
            EVENT_ADAPTER.validate_json(r.value) for r in storage.broker.records(TOPICS.events)
        )
        if isinstance(e, ImageStored)
    ]
    assert late.image_id not in {e.data.image_id for e in stored}


async def test_delete_story_removes_exactly_its_pages(storage: Storage) -> None:
    await _seed(storage)
    before = set(await storage.blobs.list("users/"))
    pages = {k for k in before if k.startswith("users/u1/stories/s1/")}
    assert len(pages) == 2 * 3
    await storage.request(DeleteStory(story_id="s1", user_id="u1"))
    await storage.request(DeleteStory(story_id="s1", user_id="u2"))  # u2 has no s1: nothing
    assert set(await storage.blobs.list("users/")) == before - pages
    assert {i for i, _ in await storage.rows()} == {
        "c1-ref",
        "c1-pack",
        "c1-story-portrait",
        "c2-pack",
        "s2-p1",
        "u2-c1",
    }
    assert {e.data.image_id for e in storage.deleted()} == {"s1-p1", "s1-p2"}
    await storage.store("s1-p3", story="s1", page=3)  # late page: refused
    assert ("s1-p3", 1) not in await storage.rows()


async def _cli_dry_run(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[str]:
    env = {
        "IMAGEGEN_DATABASE_URL": storage.database_url,
        "IMAGEGEN_S3_ENDPOINT": storage.s3.endpoint or "",
        "IMAGEGEN_S3_BUCKET": storage.s3.bucket,
        "IMAGEGEN_S3_REGION": storage.s3.region,
        "IMAGEGEN_S3_ACCESS_KEY": storage.s3.access_key.get_secret_value(),
        "IMAGEGEN_S3_SECRET_KEY": storage.s3.secret_key.get_secret_value(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    # The CLI runs its own event loop: give it a thread of its own.
    with pytest.raises(SystemExit) as exit_info:
        await asyncio.to_thread(cli_main, ["storage", "cleanup", "--dry-run"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out.strip().splitlines()


async def test_cleanup_removes_images_of_deleted_owners_still_present(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await _seed(storage)
    # A tombstone recorded but its images not yet removed, as when an image is stored in
    # the moment between the two, or the deleting storage instance died in between.
    await storage.pool.execute(
        "INSERT INTO deleted_owners (user_id, owner_kind, owner_id)"
        " VALUES ('u1', 'story', 's2'), ('u1', 'character', 'c2')"
    )
    stray = "users/u1/stories/s2/pages/9/images/lost/v1/original.png"
    await storage.blobs.put(stray, b"left behind", "image/png")
    before = set(await storage.blobs.list("users/"))
    doomed = {
        k for k in before if k.startswith(("users/u1/stories/s2/", "users/u1/characters/c2/"))
    }
    assert len(doomed) == 2 * 3 + 1

    dry = await cleanup(storage.pool, storage.blobs, older_than=timedelta(hours=24), dry_run=True)
    assert set(dry.keys) == doomed and len(dry.keys) == len(doomed)
    assert sorted(dry.deleted_owner_images) == [("c2-pack", 1), ("s2-p1", 1)]
    assert dry.staging == [] and dry.orphans == []
    assert set(await storage.blobs.list("users/")) == before  # a dry run removes nothing
    report = await _cli_dry_run(storage, monkeypatch, capsys)
    assert report[-1] == (
        "would remove 0 staging and 0 orphaned objects, 2 image versions and 7 objects of"
        f" deleted characters/stories ({dry.bytes} bytes)"
    )
    assert sorted(line.removeprefix("would remove ") for line in report[:-1]) == sorted(doomed)

    events = EventEmitter(storage.broker.publisher(), TOPICS.events, SOURCE)
    done = await cleanup(
        storage.pool, storage.blobs, older_than=timedelta(hours=24), dry_run=False, events=events
    )
    assert set(done.keys) == doomed
    assert set(await storage.blobs.list("users/")) == before - doomed
    assert {i for i, _ in await storage.rows()} == {
        "c1-ref",
        "c1-pack",
        "c1-story-portrait",
        "s1-p1",
        "s1-p2",
        "u2-c1",
    }
    assert {e.data.image_id for e in storage.deleted()} == {"c2-pack", "s2-p1"}
    again = await cleanup(storage.pool, storage.blobs, older_than=timedelta(hours=24), dry_run=True)
    assert again.keys == [] and again.deleted_owner_images == []
