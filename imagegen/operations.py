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
    settings: ServiceSettings,
    *,
    older_than: timedelta,
    dry_run: bool,
    retain_deleted_stories: timedelta | None = None,
) -> list[str]:
    from imagegen.events import EventEmitter
    from imagegen.runtime import kafka_publisher
    from services.storage.cleanup import cleanup
    from services.storage.handlers import SOURCE

    # Cleanup holds a session advisory lock on one of these connections: keep the reset.
    pool = await create_pool(settings.database_url, "storage", session_state=True)
    # Removed images of deleted characters/stories are announced (image_deleted) so the
    # gateway's view drops them; a dry run publishes nothing.
    publisher = None if dry_run else kafka_publisher(settings.kafka, "storage-cleanup")
    try:
        events = (
            EventEmitter(publisher, settings.kafka.topics.events, SOURCE) if publisher else None
        )
        async with S3BlobStore(settings.s3) as blobs:
            report = await cleanup(
                pool,
                blobs,
                older_than=older_than,
                dry_run=dry_run,
                events=events,
                retain_deleted_stories=retain_deleted_stories,
            )
    finally:
        await pool.close()
        if publisher is not None:
            await publisher.close()
    if report.skipped:
        return ["skipped: another storage clean-up holds the lock"]
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {k}" for k in report.keys]
    lines.append(
        f"{verb} {len(report.staging)} staging and {len(report.orphans)} orphaned objects,"
        f" {len(report.deleted_owner_images)} image versions and"
        f" {len(report.deleted_owner_objects)} objects of deleted characters/stories"
        f" ({report.bytes} bytes)"
    )
    if report.retired_images:
        lines.append(
            f"{'would tag' if dry_run else 'tagged'} {len(report.retired_images)} image versions"
            " of deleted stories kept for their retention"
        )
    return lines


class LifecycleRefused(Exception):
    """The bucket refused or did not keep the declared lifecycle rules."""


def storage_lifecycle_apply(settings: ServiceSettings, *, skip: frozenset[str]) -> list[str]:
    """Put the declared rules (less `skip`) on the bucket, read them back, report each."""
    import boto3  # type: ignore[import-untyped]
    from botocore.client import Config
    from botocore.exceptions import ClientError

    from services.storage.bucket_lifecycle import RULES, configuration, missing

    s3 = settings.s3
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        aws_access_key_id=s3.access_key.get_secret_value(),
        aws_secret_access_key=s3.secret_key.get_secret_value(),
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    wanted = configuration(skip)
    try:
        client.put_bucket_lifecycle_configuration(Bucket=s3.bucket, LifecycleConfiguration=wanted)
        applied = client.get_bucket_lifecycle_configuration(Bucket=s3.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        needs = ", ".join(f"{r.id} ({r.needs})" for r in RULES if r.id not in skip)
        raise LifecycleRefused(
            f"bucket {s3.bucket} refused the lifecycle rules ({code}: {exc}); they need: {needs}."
            " Leave out what this S3 does not implement with --skip RULE_ID"
        ) from exc
    lost = missing(applied, wanted)
    if lost:
        raise LifecycleRefused(f"bucket {s3.bucket} did not keep rule(s) {lost} as declared")
    lines = [f"applied {r['ID']}" for r in wanted["Rules"]]
    lines += [f"skipped {rule_id}" for rule_id in sorted(skip)]
    return lines
