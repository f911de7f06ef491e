"""Finding and removing what no finished image needs (`imagegen storage cleanup`).

- Staging objects older than the cut-off: the generator's originals, and the renditions
  postprocess stages instead of writing them to their final keys (an image held back for
  another variation, a second copy); staged bytes are only needed while work is in flight;
  the cut-off (24 h by default) is far beyond any job's life. A bucket lifecycle rule on
  the staging prefix (set by `imagegen up` and in deploy/k8s) does the same job
  unattended; this command reports and catches up.
- Images of deleted characters and stories still present (one stored in the moment
  between the owner's tombstone and its deletion, say): their rows and every object under
  the owner's prefix, whatever their age, since nothing there is wanted any more.
- Final objects under `users/` that no image row points at (postprocess writes them
  before storage inserts the row: a crash or a job ended in between leaves them behind),
  older than the cut-off so in-flight finalisation is never raced.
- Deleted stories whose objects are kept a year (IMAGEGEN_RETAIN_DELETED_STORIES): an
  image stored after the deletion is tagged and tombstoned like the others; a year after
  the deletion, when the lifecycle rule has expired the objects, the rows (and any object
  left) are removed.
Uploaded reference photos (`references/`) belong to the gateway and are not touched.

A run holds a PostgreSQL advisory lock for its whole length (the CronJob forbids overlap,
but a manual run or a slow one must not race it): a second run finds it taken and skips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from imagegen.blobstore import STAGING_PREFIX, BlobStore, ObjectInfo
from imagegen.events import EventEmitter
from services.storage.owners import OWNED_BY, emit_deleted, remove_images, retire_images

FINAL_PREFIX = "users/"
_OWNER_DIRS = {"characters": "character", "stories": "story"}

Owner = tuple[str, str, str]
"""(user id, owner kind, owner id)"""


@dataclass(frozen=True)
class CleanupReport:
    staging: list[ObjectInfo] = field(default_factory=list)
    orphans: list[ObjectInfo] = field(default_factory=list)
    deleted_owner_objects: list[ObjectInfo] = field(default_factory=list)
    deleted_owner_images: list[tuple[str, int]] = field(default_factory=list)
    """(image id, version) rows of deleted characters and stories."""
    retired_images: list[tuple[str, int]] = field(default_factory=list)
    """(image id, version) of retained deleted stories, tagged and tombstoned now."""
    removed: bool = False
    skipped: bool = False
    """Another clean-up held the lock: nothing was looked at."""

    @property
    def objects(self) -> list[ObjectInfo]:
        return [*self.staging, *self.orphans, *self.deleted_owner_objects]

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objects]

    @property
    def bytes(self) -> int:
        return sum(o.size for o in self.objects)


def _owner_of_key(key: str) -> Owner | None:
    parts = key.split("/")
    if len(parts) < 5 or parts[0] != "users" or parts[2] not in _OWNER_DIRS:
        return None
    return parts[1], _OWNER_DIRS[parts[2]], parts[3]


async def _deleted_owners(pool: asyncpg.Pool) -> set[Owner]:
    rows = await pool.fetch("SELECT user_id, owner_kind, owner_id FROM deleted_owners")
    return {(r["user_id"], r["owner_kind"], r["owner_id"]) for r in rows}


async def _retained_stories(pool: asyncpg.Pool, retention: timedelta, now: datetime) -> set[Owner]:
    """Deleted stories still inside their retention (their objects stay, tagged)."""
    rows = await pool.fetch(
        "SELECT user_id, owner_kind, owner_id FROM deleted_owners"
        " WHERE owner_kind = 'story' AND deleted_at > $1",
        now - retention,
    )
    return {(r["user_id"], r["owner_kind"], r["owner_id"]) for r in rows}


async def _owner_rows(
    pool: asyncpg.Pool, owners: set[Owner], *, untombstoned: bool = False
) -> dict[Owner, list[tuple[str, int]]]:
    found: dict[Owner, list[tuple[str, int]]] = {}
    for owner in sorted(owners):
        user_id, kind, owner_id = owner
        rows = await pool.fetch(
            f"SELECT image_id, version FROM images WHERE user_id = $1 AND {OWNED_BY[kind]}"
            + (" AND image_id NOT IN (SELECT image_id FROM deleted_images)" if untombstoned else "")
            + " ORDER BY image_id, version",
            user_id,
            owner_id,
        )
        if rows:
            found[owner] = [(r["image_id"], r["version"]) for r in rows]
    return found


async def _known_keys(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT renditions FROM images")
    return {r["key"] for row in rows for r in json.loads(row["renditions"])}


# pg_try_advisory_lock key of `imagegen storage cleanup` (any constant, shared by all runs).
CLEANUP_LOCK = 0x1D6E_C1EA


async def cleanup(
    pool: asyncpg.Pool,
    blobs: BlobStore,
    *,
    older_than: timedelta,
    dry_run: bool,
    now: datetime | None = None,
    events: EventEmitter | None = None,
    retain_deleted_stories: timedelta | None = None,
) -> CleanupReport:
    """Report (dry run) or remove; `events` gets image_deleted for deleted owners' images.
    Skips (report.skipped) when another run holds the lock."""
    async with pool.acquire() as lock_conn:
        if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", CLEANUP_LOCK):
            return CleanupReport(skipped=True)
        try:
            return await _cleanup(
                pool,
                blobs,
                older_than=older_than,
                dry_run=dry_run,
                now=now or datetime.now(UTC),
                events=events,
                retention=retain_deleted_stories,
            )
        finally:
            await lock_conn.execute("SELECT pg_advisory_unlock($1)", CLEANUP_LOCK)


async def _cleanup(
    pool: asyncpg.Pool,
    blobs: BlobStore,
    *,
    older_than: timedelta,
    dry_run: bool,
    now: datetime,
    events: EventEmitter | None,
    retention: timedelta | None,
) -> CleanupReport:
    cutoff = now - older_than
    staging = [o for o in await blobs.list_info(STAGING_PREFIX) if o.last_modified < cutoff]
    deleted = await _deleted_owners(pool)
    retained = await _retained_stories(pool, retention, now) if retention else set()
    removable = deleted - retained
    owner_rows = await _owner_rows(pool, removable) if removable else {}
    new_rows = await _owner_rows(pool, retained, untombstoned=True) if retained else {}
    known = await _known_keys(pool)
    orphans, owner_objects = [], []
    for o in await blobs.list_info(FINAL_PREFIX):
        owner = _owner_of_key(o.key)
        if owner in removable:
            owner_objects.append(o)
        elif owner not in retained and o.last_modified < cutoff and o.key not in known:
            orphans.append(o)
    report = CleanupReport(
        staging,
        orphans,
        owner_objects,
        [image for rows in owner_rows.values() for image in rows],
        [image for rows in new_rows.values() for image in rows],
        removed=not dry_run,
    )
    if dry_run:
        return report
    if report.keys:
        await blobs.delete(report.keys)
    async with pool.acquire() as conn:
        for user_id, kind, owner_id in owner_rows:
            await remove_images(conn, blobs, user_id, kind, owner_id, with_prefix=False)
            if events is not None:
                await emit_deleted(conn, events, user_id, kind, owner_id)
        for user_id, _, owner_id in new_rows:
            await retire_images(conn, blobs, user_id, owner_id, only_new=True)
            if events is not None:
                await emit_deleted(conn, events, user_id, "story", owner_id)
    return report
