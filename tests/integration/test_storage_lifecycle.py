"""Bucket lifecycle, deleted stories kept a year, Cache-Control on final objects and the
clean-up lock, on real SeaweedFS and PostgreSQL.

SeaweedFS 4.48 implements prefix expiration and tag-filtered expiration and refuses
transitions (NotImplemented); the Intelligent-Tiering rule is checked as a document
against S3's own request model (test_rule_documents_are_valid_s3_requests).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import boto3  # type: ignore[import-untyped]
import pytest
from botocore.client import Config
from botocore.session import get_session
from botocore.validate import ParamValidator
from pydantic import SecretStr

from imagegen.blobstore import S3BlobStore
from imagegen.events import EventEmitter
from imagegen.operations import LifecycleRefused, storage_lifecycle_apply
from imagegen.settings import S3Settings, ServiceSettings
from imagegen.stack.s3 import ensure_bucket
from schemas.requests import DeleteStory
from services.storage.bucket_lifecycle import (
    DELETED_STORY_RETENTION,
    RULES,
    configuration,
)
from services.storage.cleanup import cleanup
from services.storage.handlers import SOURCE
from services.storage.layout import CACHE_CONTROL
from services.storage.lifecycle import ImageLifecycle
from services.storage.owners import DELETED_TAG
from tests.fixtures.servers import S3Info
from tests.integration.test_storage_owners import TOPICS, Storage, _seed, storage

pytestmark = pytest.mark.integration
__all__ = ["storage"]  # the fixture, imported


def _client(s3: S3Settings) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        aws_access_key_id=s3.access_key.get_secret_value(),
        aws_secret_access_key=s3.secret_key.get_secret_value(),
        config=Config(s3={"addressing_style": "path"}),
    )


def _bucket(seaweed: S3Info) -> S3Settings:
    bucket = f"life-{uuid.uuid4().hex[:10]}"
    ensure_bucket(seaweed.endpoint, bucket, seaweed.access_key, seaweed.secret_key, seaweed.region)
    return S3Settings(
        endpoint=seaweed.endpoint,
        bucket=bucket,
        region=seaweed.region,
        access_key=SecretStr(seaweed.access_key),
        secret_key=SecretStr(seaweed.secret_key),
    )


def test_rule_documents_are_valid_s3_requests() -> None:
    shape = get_session().get_service_model("s3")
    op = shape.operation_model("PutBucketLifecycleConfiguration").input_shape
    params = {"Bucket": "imagegen", "LifecycleConfiguration": configuration()}
    report = ParamValidator().validate(params, op)
    assert not report.has_errors(), report.generate_report()
    rules = {r["ID"]: r for r in configuration()["Rules"]}
    assert rules["expire-staging"]["Filter"] == {"Prefix": "staging/"}
    assert rules["expire-staging"]["Expiration"] == {"Days": 1}
    assert rules["final-to-intelligent-tiering"]["Transitions"] == [
        {"Days": 30, "StorageClass": "INTELLIGENT_TIERING"}
    ]
    assert "Expiration" not in rules["final-to-intelligent-tiering"]  # tiering, never deletion
    assert rules["expire-deleted-stories"]["Filter"] == {
        "And": {"Prefix": "users/", "Tags": [{"Key": DELETED_TAG[0], "Value": DELETED_TAG[1]}]}
    }
    assert rules["expire-deleted-stories"]["Expiration"] == {"Days": 365}
    assert timedelta(days=365) == DELETED_STORY_RETENTION
    assert len({r.id for r in RULES}) == len(RULES)
    with pytest.raises(ValueError, match="no lifecycle rule"):
        configuration(frozenset({"nope"}))


def test_lifecycle_apply_writes_every_rule_seaweedfs_implements(seaweed: S3Info) -> None:
    s3 = _bucket(seaweed)
    settings = ServiceSettings(s3=s3)
    # The whole declaration: SeaweedFS refuses the transition, and the error says how on.
    with pytest.raises(LifecycleRefused, match=r"NotImplemented.*--skip"):
        storage_lifecycle_apply(settings, skip=frozenset())
    skip = frozenset({"final-to-intelligent-tiering"})
    lines = storage_lifecycle_apply(settings, skip=skip)
    assert lines == [
        "applied expire-staging",
        "applied expire-deleted-stories",
        "skipped final-to-intelligent-tiering",
    ]
    held = _client(s3).get_bucket_lifecycle_configuration(Bucket=s3.bucket)["Rules"]
    assert {r["ID"]: r for r in held} == {r["ID"]: r for r in configuration(skip)["Rules"]}
    # Applying again replaces, never duplicates.
    storage_lifecycle_apply(settings, skip=skip)
    assert len(_client(s3).get_bucket_lifecycle_configuration(Bucket=s3.bucket)["Rules"]) == 2


async def test_final_objects_carry_cache_control_and_tags_restart_age(seaweed: S3Info) -> None:
    s3 = _bucket(seaweed)
    client = _client(s3)
    async with S3BlobStore(s3) as blobs:
        await blobs.put("staging/x.webp", b"bytes", "image/webp")
        await blobs.copy(
            "staging/x.webp",
            "users/u/x.webp",
            content_type="image/webp",
            cache_control=CACHE_CONTROL,
        )
        head = client.head_object(Bucket=s3.bucket, Key="users/u/x.webp")
        assert head["CacheControl"] == "public, max-age=2592000, immutable"
        assert head["ContentType"] == "image/webp"
        before = head["LastModified"]
        await asyncio.sleep(1.1)
        await blobs.tag(["users/u/x.webp"], dict([DELETED_TAG]))
        assert await blobs.tags("users/u/x.webp") == dict([DELETED_TAG])
        after = client.head_object(Bucket=s3.bucket, Key="users/u/x.webp")
        # Tagging keeps the bytes and headers and restarts the age the rule counts from.
        assert after["LastModified"] > before
        assert after["CacheControl"] == CACHE_CONTROL and after["ContentType"] == "image/webp"
        assert await blobs.get("users/u/x.webp") == b"bytes"


async def test_deleted_story_is_tagged_kept_a_year_then_removed(storage: Storage) -> None:
    await _seed(storage)
    events = EventEmitter(storage.broker.publisher(), TOPICS.events, SOURCE)
    retaining = ImageLifecycle(storage.pool, storage.blobs, events, retain_deleted_stories=True)
    story = {k for k in await storage.blobs.list("users/u1/stories/s1/")}
    assert len(story) == 2 * 3
    rows_before = await storage.rows()

    await retaining.on_request(_record(DeleteStory(story_id="s1", user_id="u1")))
    # The API answers 404 at once: image_deleted for each image (the gateway drops them).
    assert {e.data.image_id for e in storage.deleted()} == {"s1-p1", "s1-p2"}
    # Objects stay, tagged for the lifecycle rule; rows stay, tombstoned.
    assert set(await storage.blobs.list("users/u1/stories/s1/")) == story
    for key in story:
        assert await storage.blobs.tags(key) == dict([DELETED_TAG])
    assert await storage.rows() == rows_before
    tombstoned = await storage.pool.fetch("SELECT image_id FROM deleted_images")
    assert {r["image_id"] for r in tombstoned} == {"s1-p1", "s1-p2"}
    for key in await storage.blobs.list("users/"):
        if key not in story:
            assert await storage.blobs.tags(key) == {}

    # Inside the year, clean-up removes nothing of it (nor counts it as orphaned).
    now = datetime.now(UTC)
    kept = await cleanup(
        storage.pool,
        storage.blobs,
        older_than=timedelta(hours=0),
        dry_run=False,
        now=now + timedelta(days=2),
        retain_deleted_stories=DELETED_STORY_RETENTION,
    )
    assert kept.orphans == [] and kept.deleted_owner_objects == []
    assert kept.deleted_owner_images == [] and kept.retired_images == []
    assert set(await storage.blobs.list("users/u1/stories/s1/")) == story

    # An image stored into the deleted story afterwards is refused by storage; one that got
    # a row in the gap is tagged and tombstoned by the next clean-up.
    await storage.pool.execute("DELETE FROM deleted_images WHERE image_id = 's1-p2'")
    gap = await cleanup(
        storage.pool,
        storage.blobs,
        older_than=timedelta(hours=24),
        dry_run=False,
        now=now,
        retain_deleted_stories=DELETED_STORY_RETENTION,
    )
    assert gap.retired_images == [("s1-p2", 2)]
    assert await storage.pool.fetchval("SELECT count(*) FROM deleted_images") == 2

    # A year on (the lifecycle rule has expired the objects), the rows go too.
    later = await cleanup(
        storage.pool,
        storage.blobs,
        older_than=timedelta(hours=24),
        dry_run=False,
        now=now + DELETED_STORY_RETENTION + timedelta(days=1),
        retain_deleted_stories=DELETED_STORY_RETENTION,
    )
    assert sorted(later.deleted_owner_images) == [("s1-p1", 1), ("s1-p2", 2)]
    assert {i for i, _ in await storage.rows()} == {i for i, _ in rows_before} - {"s1-p1", "s1-p2"}
    assert await storage.blobs.list("users/u1/stories/s1/") == []


async def test_two_cleanups_never_race(storage: Storage, database_url: str) -> None:
    await _seed(storage)
    holder = await asyncpg.connect(database_url)
    try:
        from services.storage.cleanup import CLEANUP_LOCK

        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", CLEANUP_LOCK)
        busy = await cleanup(
            storage.pool, storage.blobs, older_than=timedelta(hours=0), dry_run=False
        )
        assert busy.skipped and busy.keys == []
        await holder.execute("SELECT pg_advisory_unlock($1)", CLEANUP_LOCK)
    finally:
        await holder.close()
    await storage.pool.execute(
        "INSERT INTO deleted_owners (user_id, owner_kind, owner_id)"
        " VALUES ('u1', 'character', 'c2')"
    )
    runs = await asyncio.gather(
        *(
            cleanup(storage.pool, storage.blobs, older_than=timedelta(hours=24), dry_run=False)
            for _ in range(2)
        )
    )
    assert sorted(r.skipped for r in runs) == [False, True]
    [done] = [r for r in runs if not r.skipped]
    assert done.deleted_owner_images == [("c2-pack", 1)]
    # Released: the next run takes the lock and finds nothing left.
    again = await cleanup(storage.pool, storage.blobs, older_than=timedelta(hours=24), dry_run=True)
    assert not again.skipped and again.deleted_owner_images == []


def _record(msg: Any) -> Any:
    from imagegen.kafka import Record, encode

    return Record(topic="t", partition=0, offset=0, key=None, value=encode(msg))
