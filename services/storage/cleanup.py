"""Finding and removing what no finished image needs (`imagegen storage cleanup`).

- Staging objects older than the cut-off: once an image is finalised its renditions are
  copied to their final keys, so staged bytes are only needed while work is in flight;
  the cut-off (24 h by default) is far beyond any job's life. A bucket lifecycle rule on
  the staging prefix (set by `imagegen up` and in deploy/k8s) does the same job
  unattended; this command reports and catches up.
- Final objects under `users/` that no image row points at (a crash between the copy
  and the insert leaves them behind), older than the cut-off so in-flight finalisation
  is never raced.
Uploaded reference photos (`references/`) belong to the gateway and are not touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from imagegen.blobstore import STAGING_PREFIX, BlobStore, ObjectInfo

FINAL_PREFIX = "users/"


@dataclass(frozen=True)
class CleanupReport:
    staging: list[ObjectInfo] = field(default_factory=list)
    orphans: list[ObjectInfo] = field(default_factory=list)
    removed: bool = False

    @property
    def keys(self) -> list[str]:
        return [o.key for o in (*self.staging, *self.orphans)]

    @property
    def bytes(self) -> int:
        return sum(o.size for o in (*self.staging, *self.orphans))


async def _known_keys(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT renditions FROM images")
    return {r["key"] for row in rows for r in json.loads(row["renditions"])}


async def cleanup(
    pool: asyncpg.Pool,
    blobs: BlobStore,
    *,
    older_than: timedelta,
    dry_run: bool,
    now: datetime | None = None,
) -> CleanupReport:
    cutoff = (now or datetime.now(UTC)) - older_than
    staging = [o for o in await blobs.list_info(STAGING_PREFIX) if o.last_modified < cutoff]
    known = await _known_keys(pool)
    orphans = [
        o
        for o in await blobs.list_info(FINAL_PREFIX)
        if o.last_modified < cutoff and o.key not in known
    ]
    report = CleanupReport(staging, orphans, removed=not dry_run)
    if not dry_run and report.keys:
        await blobs.delete(report.keys)
    return report
