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
    from services.storage.cleanup import cleanup

    pool = await create_pool(settings.database_url, "storage")
    try:
        async with S3BlobStore(settings.s3) as blobs:
            report = await cleanup(pool, blobs, older_than=older_than, dry_run=dry_run)
    finally:
        await pool.close()
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {k}" for k in report.keys]
    lines.append(
        f"{verb} {len(report.staging)} staging and {len(report.orphans)} orphaned objects"
        f" ({report.bytes} bytes)"
    )
    return lines
