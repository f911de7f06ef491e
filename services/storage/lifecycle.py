"""Deleting and reviewing stored images (commands on `requests`, keyed by user id).

Deleting a whole character or story is in `owners.py`. A delete of one image removes
every version's objects and rows and leaves a tombstone, so a processed
image that arrives later for the same id is not stored again. A review records the
decision on the image's latest version. Both are idempotent: a redelivered command finds
the work done and emits the same event (same id) again.
"""

from __future__ import annotations

import json
import logging

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.db import transient_as_retryable
from imagegen.events import EventEmitter
from imagegen.kafka import Record, decode
from imagegen.object_layout import FINAL_PREFIX
from schemas.events import ImageReviewed, ImageReviewedData, event_id
from schemas.requests import (
    REQUEST_ADAPTER,
    DeleteCharacter,
    DeleteImage,
    DeleteStory,
    DiscardImage,
    ReviewImage,
)
from services.storage.owners import delete_owner, deleted_event

log = logging.getLogger(__name__)


class ImageLifecycle:
    def __init__(
        self,
        pool: asyncpg.Pool,
        blobs: BlobStore,
        events: EventEmitter,
        *,
        retain_deleted_stories: bool = False,
    ) -> None:
        self._pool = pool
        self._blobs = blobs
        self._events = events
        self._retain_stories = retain_deleted_stories

    async def on_request(self, record: Record) -> None:
        request = decode(record, REQUEST_ADAPTER)
        if isinstance(request, DeleteImage):
            await self._delete(request)
        elif isinstance(request, ReviewImage):
            await self._review(request)
        elif isinstance(request, DeleteCharacter):
            await delete_owner(
                self._pool,
                self._blobs,
                self._events,
                request.user_id,
                "character",
                request.character_id,
            )
        elif isinstance(request, DiscardImage):
            await self._discard(request)
        elif isinstance(request, DeleteStory):
            await delete_owner(
                self._pool,
                self._blobs,
                self._events,
                request.user_id,
                "story",
                request.story_id,
                retain_stories=self._retain_stories,
            )
        # Generation commands and cancellations belong to the scheduler.

    async def _delete(self, request: DeleteImage) -> None:
        async with transient_as_retryable(), self._pool.acquire() as conn:
            tomb = await conn.fetchrow(
                "SELECT user_id, versions FROM deleted_images WHERE image_id = $1",
                request.image_id,
            )
            if tomb is None:
                rows = await conn.fetch(
                    "SELECT version, user_id, renditions FROM images WHERE image_id = $1",
                    request.image_id,
                )
                if not rows or any(r["user_id"] != request.user_id for r in rows):
                    log.info("event=delete_unknown_image image_id=%s", request.image_id)
                    return
                keys = [rend["key"] for r in rows for rend in json.loads(r["renditions"])]
                # Objects first: if this fails the rows still point at them and a
                # redelivery retries; a tombstone is only written once nothing is left.
                await self._blobs.delete(keys)
                versions = sorted(r["version"] for r in rows)
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO deleted_images (image_id, user_id, versions)"
                        " VALUES ($1, $2, $3) ON CONFLICT (image_id) DO NOTHING",
                        request.image_id,
                        request.user_id,
                        versions,
                    )
                    await conn.execute("DELETE FROM images WHERE image_id = $1", request.image_id)
                log.info(
                    "event=image_deleted image_id=%s versions=%s objects=%d",
                    request.image_id,
                    versions,
                    len(keys),
                )
            elif tomb["user_id"] != request.user_id:
                return
            else:
                versions = list(tomb["versions"])
        await self._events.emit(deleted_event(request.image_id, request.user_id, versions))

    async def _discard(self, request: DiscardImage) -> None:
        """Remember that this version ended unstored and delete what its attempts wrote to
        its final keys (postprocess writes there directly; an attempt that failed half-way
        leaves objects no row will ever point at). One stored already stays as it is (it
        was announced before the job ended)."""
        async with transient_as_retryable(), self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO discarded_images (image_id, version, job_id, reason)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                request.image_id,
                request.version,
                request.job_id,
                request.reason,
            )
            stored = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM images WHERE image_id = $1 AND version = $2)",
                request.image_id,
                request.version,
            )
        leftovers: list[str] = []
        if not stored and _own_version_prefix(request):
            leftovers = await self._blobs.list(request.prefix)
            if leftovers:
                await self._blobs.delete(leftovers)
        log.info(
            "event=image_discarded image_id=%s version=%d reason=%s leftovers=%d",
            request.image_id,
            request.version,
            request.reason,
            len(leftovers),
        )

    async def _review(self, request: ReviewImage) -> None:
        async with transient_as_retryable(), self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "UPDATE images SET review_status = $3, reviewed_at = now()"
                " WHERE image_id = $1 AND user_id = $2"
                " AND NOT EXISTS (SELECT 1 FROM deleted_images WHERE image_id = $1)"
                " AND version = ("
                "   SELECT max(version) FROM images WHERE image_id = $1)"
                " RETURNING version, job_id",
                request.image_id,
                request.user_id,
                request.decision.value,
            )
        if row is None:
            log.info("event=review_unknown_image image_id=%s", request.image_id)
            return
        await self._events.emit(
            ImageReviewed(
                id=event_id("image_reviewed", request.image_id, row["version"], request.decision),
                source="",
                subject=f"images/{request.image_id}",
                job_id=row["job_id"],
                user_id=request.user_id,
                data=ImageReviewedData(
                    image_id=request.image_id,
                    version=row["version"],
                    decision=request.decision.value,
                ),
            )
        )


def _own_version_prefix(request: DiscardImage) -> bool:
    """The prefix names exactly this user's image version (never a wider listing)."""
    return request.prefix.startswith(f"{FINAL_PREFIX}{request.user_id}/") and (
        request.prefix.endswith(f"/images/{request.image_id}/v{request.version}/")
    )
