"""Storage clean-up and the migrate command on real SeaweedFS and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import SecretStr

from imagegen.blobstore import S3BlobStore, put_staging
from imagegen.cli import main as cli_main
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from imagegen.settings import S3Settings
from imagegen.stack.s3 import ensure_bucket, expire_staging, s3_client
from schemas.images import GenerationRecord, ProcessedImage, Rendition
from schemas.jobs import ImageIdentity
from schemas.topics import TopicNames
from services.storage.cleanup import cleanup
from services.storage.handlers import StorageService
from tests.fixtures.servers import S3Info

TOPICS = TopicNames("it")


@pytest.fixture
async def bucket_store(seaweed: S3Info) -> AsyncIterator[S3BlobStore]:
    """A bucket of its own: clean-up must not see other tests' objects."""
    bucket = f"cleanup-{uuid.uuid4().hex[:10]}"
    ensure_bucket(seaweed.endpoint, bucket, seaweed.access_key, seaweed.secret_key, seaweed.region)
    settings = S3Settings(
        endpoint=seaweed.endpoint,
        bucket=bucket,
        region=seaweed.region,
        access_key=SecretStr(seaweed.access_key),
        secret_key=SecretStr(seaweed.secret_key),
    )
    async with S3BlobStore(settings) as store:
        yield store


async def test_cleanup_removes_exactly_old_staging_and_orphans(
    bucket_store: S3BlobStore, storage_pool: asyncpg.Pool
) -> None:
    blobs = bucket_store
    staged = await put_staging(blobs, b"\x89PNG finished image", "image/png")
    image = ImageIdentity(
        job_id="j",
        image_id="img",
        image_index=0,
        image_count=1,
        user_id="u",
        character_id="c",
        story_id="s",
        page_number=3,
    )
    processed = ProcessedImage(
        image=image,
        renditions=[Rendition(name="original", blob=staged, width=8, height=8, format="png")],
        record=GenerationRecord(
            backend="b", model="m", seed=1, steps=1, guidance=1.0, prompt="p", width=8, height=8
        ),
        provider="fake",
        cost_usd=0.0,
    )
    service = StorageService(storage_pool, blobs, InMemoryBroker().publisher(), TOPICS)
    record = Record(topic="t", partition=0, offset=0, key="j", value=encode(processed))
    await service.on_processed_image(record)
    await service.on_processed_image(record)  # redelivered: nothing stored twice
    final = await blobs.list("users/")
    assert final == ["users/u/stories/s/pages/3/images/img/v1/original.png"]
    assert await storage_pool.fetchval("SELECT count(*) FROM images") == 1

    orphan = "users/u/characters/c/images/lost/v1/original.png"
    await blobs.put(orphan, b"left behind by a crash", "image/png")
    in_flight = await put_staging(blobs, b"still being processed", "image/png")

    # Nothing is old yet: nothing goes.
    assert (
        await cleanup(storage_pool, blobs, older_than=timedelta(hours=24), dry_run=True)
    ).keys == []

    later = datetime.now(UTC) + timedelta(days=2)
    dry = await cleanup(
        storage_pool, blobs, older_than=timedelta(hours=24), dry_run=True, now=later
    )
    assert sorted(dry.keys) == sorted([staged.key, in_flight.key, orphan])
    assert await blobs.exists(orphan) and await blobs.exists(staged.key)

    done = await cleanup(
        storage_pool, blobs, older_than=timedelta(hours=24), dry_run=False, now=later
    )
    assert sorted(done.keys) == sorted(dry.keys)
    assert await blobs.list("staging/") == []
    assert await blobs.list("users/") == final  # the finished image is untouched


def test_staging_lifecycle_rule_is_set(seaweed: S3Info) -> None:
    bucket = f"lifecycle-{uuid.uuid4().hex[:10]}"
    args = (seaweed.access_key, seaweed.secret_key, seaweed.region)
    ensure_bucket(seaweed.endpoint, bucket, *args)
    expire_staging(seaweed.endpoint, bucket, *args, days=1)
    rules = s3_client(seaweed.endpoint, *args).get_bucket_lifecycle_configuration(Bucket=bucket)
    (rule,) = rules["Rules"]
    assert rule["Expiration"]["Days"] == 1
    assert rule["Filter"]["Prefix"] == "staging/"


def test_migrate_command_applies_every_schema(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGEGEN_DATABASE_URL", database_url)
    for _ in range(2):  # idempotent
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["migrate"])
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for schema in ("gateway", "scheduler", "generator", "postprocess", "storage"):
        assert f"{schema}: version" in out
