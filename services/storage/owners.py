"""Deleting a character's or a story's images (DeleteCharacter / DeleteStory on `requests`).

An image belongs to the owner whose prefix holds it (`layout.owner_of`): a story page's
scenes to the story; portraits, reference sets and packs to the character (also those
a story job made, which the character keeps). Deleting an owner:

1. records a tombstone for the owner first, so a processed image of it that arrives
   later is not stored (storage drops it and its staging objects);
2. removes every object under the owner's prefix (all images, versions, renditions, and
   anything a crash left there), then in one transaction the image rows (references
   cascade) with a per-image tombstone;
3. emits image_deleted for every image of the owner, from the tombstones.

A redelivered command finds the rows gone and emits the same events (same ids) again.
An image stored in the moment between the tombstone and the row deletion is caught by
`imagegen storage cleanup`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.db import transient_as_retryable
from imagegen.events import EventEmitter
from schemas.events import ImageDeleted, ImageDeletedData, event_id
from services.storage.layout import owner_prefix

log = logging.getLogger(__name__)

OWNER_COLUMN = {"character": "character_id", "story": "story_id"}
# Objects of a deleted story kept for a year carry this tag; the bucket's lifecycle rule
# `expire-deleted-stories` (services/storage/bucket_lifecycle.py) expires them.
DELETED_TAG = ("imagegen-deleted", "story")
# Which image rows an owner holds; matches `layout.owner_of`.
OWNED_BY = {
    "character": "character_id = $2 AND NOT (story_id IS NOT NULL AND page_number IS NOT NULL)",
    "story": "story_id = $2 AND page_number IS NOT NULL",
}


def deleted_event(image_id: str, user_id: str, versions: list[int]) -> ImageDeleted:
    return ImageDeleted(
        id=event_id("image_deleted", image_id, *versions),
        source="",
        subject=f"images/{image_id}",
        user_id=user_id,
        data=ImageDeletedData(image_id=image_id, versions=versions),
    )


async def is_owner_deleted(
    conn: asyncpg.Connection, user_id: str, owner_kind: str, owner_id: str
) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM deleted_owners"
            " WHERE user_id = $1 AND owner_kind = $2 AND owner_id = $3",
            user_id,
            owner_kind,
            owner_id,
        )
    )


async def remove_images(
    conn: asyncpg.Connection,
    blobs: BlobStore,
    user_id: str,
    owner_kind: str,
    owner_id: str,
    *,
    with_prefix: bool,
) -> int:
    """Delete the owner's objects, then its rows with per-image tombstones; returns the
    number of image versions removed."""
    rows = await conn.fetch(
        f"SELECT image_id, version, renditions FROM images"
        f" WHERE user_id = $1 AND {OWNED_BY[owner_kind]}",
        user_id,
        owner_id,
    )
    keys = {rend["key"] for r in rows for rend in json.loads(r["renditions"])}
    if with_prefix:
        keys.update(await blobs.list(owner_prefix(user_id, owner_kind, owner_id)))
    # Objects first: if this fails the rows still point at them and a redelivery retries.
    if keys:
        await blobs.delete(sorted(keys))
    async with conn.transaction():
        await tombstone_images(conn, user_id, owner_kind, owner_id, list(rows))
        await conn.execute(
            f"DELETE FROM images WHERE user_id = $1 AND {OWNED_BY[owner_kind]}",
            user_id,
            owner_id,
        )
    log.info(
        "event=owner_images_deleted user_id=%s owner=%s/%s images=%d objects=%d",
        user_id,
        owner_kind,
        owner_id,
        len(rows),
        len(keys),
    )
    return len(rows)


async def tombstone_images(
    conn: asyncpg.Connection, user_id: str, owner_kind: str, owner_id: str, rows: list[Any]
) -> None:
    versions: dict[str, list[int]] = {}
    for r in rows:
        versions.setdefault(r["image_id"], []).append(r["version"])
    for image_id, image_versions in versions.items():
        await conn.execute(
            "INSERT INTO deleted_images (image_id, user_id, versions, owner_kind, owner_id)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (image_id) DO UPDATE SET"
            " versions = (SELECT array_agg(DISTINCT v ORDER BY v)"
            "   FROM unnest(deleted_images.versions || excluded.versions) v),"
            " owner_kind = excluded.owner_kind, owner_id = excluded.owner_id",
            image_id,
            user_id,
            sorted(image_versions),
            owner_kind,
            owner_id,
        )


async def retire_images(
    conn: asyncpg.Connection,
    blobs: BlobStore,
    user_id: str,
    owner_id: str,
    *,
    only_new: bool,
) -> int:
    """A deleted story whose objects are kept a year: tag them for the lifecycle rule and
    tombstone the images (the API answers 404 at once); the rows stay until clean-up
    removes them when the objects expire. `only_new`: just the images not tombstoned yet
    (stored in the moment after the deletion). Returns the image versions retired."""
    rows = await conn.fetch(
        f"SELECT image_id, version, renditions FROM images"
        f" WHERE user_id = $1 AND {OWNED_BY['story']}"
        + (" AND image_id NOT IN (SELECT image_id FROM deleted_images)" if only_new else ""),
        user_id,
        owner_id,
    )
    keys = {rend["key"] for r in rows for rend in json.loads(r["renditions"])}
    if not only_new:
        keys.update(await blobs.list(owner_prefix(user_id, "story", owner_id)))
    if keys:
        await blobs.tag(sorted(keys), dict([DELETED_TAG]))
    async with conn.transaction():
        await tombstone_images(conn, user_id, "story", owner_id, list(rows))
    log.info(
        "event=story_images_retired user_id=%s story=%s images=%d objects=%d",
        user_id,
        owner_id,
        len(rows),
        len(keys),
    )
    return len(rows)


async def emit_deleted(
    conn: asyncpg.Connection, events: EventEmitter, user_id: str, owner_kind: str, owner_id: str
) -> int:
    tombs = await conn.fetch(
        "SELECT image_id, versions FROM deleted_images"
        " WHERE user_id = $1 AND owner_kind = $2 AND owner_id = $3 ORDER BY image_id",
        user_id,
        owner_kind,
        owner_id,
    )
    for tomb in tombs:
        await events.emit(deleted_event(tomb["image_id"], user_id, list(tomb["versions"])))
    return len(tombs)


async def delete_owner(
    pool: asyncpg.Pool,
    blobs: BlobStore,
    events: EventEmitter,
    user_id: str,
    owner_kind: str,
    owner_id: str,
    *,
    retain_stories: bool = False,
) -> None:
    """`retain_stories`: a story's objects are tagged and kept a year (retire_images)."""
    async with transient_as_retryable(), pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO deleted_owners (user_id, owner_kind, owner_id) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            user_id,
            owner_kind,
            owner_id,
        )
        if retain_stories and owner_kind == "story":
            await retire_images(conn, blobs, user_id, owner_id, only_new=False)
        else:
            await remove_images(conn, blobs, user_id, owner_kind, owner_id, with_prefix=True)
        count = await emit_deleted(conn, events, user_id, owner_kind, owner_id)
        await conn.execute(
            "UPDATE deleted_owners SET image_count = $4"
            " WHERE user_id = $1 AND owner_kind = $2 AND owner_id = $3",
            user_id,
            owner_kind,
            owner_id,
            count,
        )
