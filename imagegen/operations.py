"""Operator commands that act on the services' databases and buckets (`imagegen migrate`,
`imagegen storage cleanup`); settings come from the same IMAGEGEN_* environment."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import timedelta

from imagegen.blobstore import S3BlobStore
from imagegen.db import create_pool, migrate
from imagegen.settings import ServiceSettings

# schema -> module holding its MIGRATIONS list; each service owns its own schema.
MIGRATION_MODULES = {
    "gateway": "services.gateway.migrations",
    "scheduler": "services.scheduler.migrations",
    "generator": "services.generator.migrations",
    "postprocess": "services.postprocess.variations",
    "storage": "services.storage.migrations",
}


async def migrate_all(settings: ServiceSettings, schemas: Sequence[str]) -> dict[str, int]:
    versions = {}
    for schema in schemas:
        migrations = importlib.import_module(MIGRATION_MODULES[schema]).MIGRATIONS
        pool = await create_pool(settings.database_url, schema)
        try:
            versions[schema] = await migrate(pool, schema, migrations)
        finally:
            await pool.close()
    return versions


async def storage_cleanup(
    settings: ServiceSettings, *, older_than: timedelta, dry_run: bool
) -> list[str]:
    from imagegen.events import EventEmitter
    from imagegen.runtime import kafka_publisher
    from services.storage.cleanup import cleanup
    from services.storage.handlers import SOURCE

    pool = await create_pool(settings.database_url, "storage")
    # Removed images of deleted characters/stories are announced (image_deleted) so the
    # gateway's view drops them; a dry run publishes nothing.
    publisher = None if dry_run else kafka_publisher(settings.kafka, "storage-cleanup")
    try:
        events = (
            EventEmitter(publisher, settings.kafka.topics.events, SOURCE) if publisher else None
        )
        async with S3BlobStore(settings.s3) as blobs:
            report = await cleanup(
                pool, blobs, older_than=older_than, dry_run=dry_run, events=events
            )
    finally:
        await pool.close()
        if publisher is not None:
            await publisher.close()
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {k}" for k in report.keys]
    lines.append(
        f"{verb} {len(report.staging)} staging and {len(report.orphans)} orphaned objects,"
        f" {len(report.deleted_owner_images)} image versions and"
        f" {len(report.deleted_owner_objects)} objects of deleted characters/stories"
        f" ({report.bytes} bytes)"
    )
    return lines
