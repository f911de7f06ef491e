"""The image read model: rows keyed (image_id, version), queried per owner, with signed URLs.

A row exists from the moment a version is asked for (status queued), so an id the API
hands out can be looked up at once. An image's *current* version is its newest ready
one (while a regeneration runs, the previous version stays on show), else its newest.
Deleting images are hidden everywhere; the projection removes them on image_deleted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast, get_args

import asyncpg

from imagegen.blobstore import BlobStore
from services.gateway import paging
from services.gateway.models_images import (
    ImageDetail,
    ImageOut,
    ImageStatus,
    ImageType,
    ReviewStatus,
    SceneSource,
)

PENDING_STATUSES = (ImageStatus.QUEUED.value, ImageStatus.GENERATING.value)
_DISPLAY_ORDER = ("display", "original", "print")
_THUMBNAIL_ORDER = ("thumbnail", *_DISPLAY_ORDER)
_COLUMNS = (
    "id, version, parent_version, kind, status, job_id, story_id, character_id, page_number,"
    " renditions, style, width, height, size_bytes, seed, model, provider, demo,"
    " consistency_score, flagged, review_status, pending_review, created_at, prompt,"
    " negative_prompt, scene_description, scene_source, quality_score, character_scores,"
    " not_scored_reason"
)


@dataclass(frozen=True)
class Links:
    """How to turn a stored key into URLs for the caller."""

    blobs: BlobStore
    ttl_s: int
    cdn_base_url: str | None = None
    cdn_signer: Callable[[str], str] | None = None
    """Signs a CDN URL (CloudFront, services/gateway/cdn.py); unsigned when None."""

    async def signed(self, renditions: dict[str, Any], order: tuple[str, ...]) -> str | None:
        key = _first_key(renditions, order)
        return None if key is None else await self.blobs.presign_get(key, self.ttl_s)

    def cdn(self, renditions: dict[str, Any]) -> str | None:
        key = _first_key(renditions, _DISPLAY_ORDER)
        if key is None or not self.cdn_base_url:
            return None
        url = f"{self.cdn_base_url.rstrip('/')}/{key}"
        return url if self.cdn_signer is None else self.cdn_signer(url)


def _first_key(renditions: dict[str, Any], order: tuple[str, ...]) -> str | None:
    for name in order:
        if name in renditions:
            return str(renditions[name]["key"])
    return None


@dataclass(frozen=True)
class ImageFilter:
    story_id: str | None = None
    character_id: str | None = None
    type: ImageType | None = None
    status: ImageStatus | None = None


def _scene_source(value: str) -> SceneSource:
    """The stored origin, or "" for one this gateway does not know (events may be newer)."""
    return cast(SceneSource, value) if value in get_args(SceneSource) else ""


async def to_out(row: asyncpg.Record, links: Links) -> ImageOut:
    renditions: dict[str, Any] = json.loads(row["renditions"])
    review = ReviewStatus(row["review_status"])
    if row["pending_review"] is not None:
        review = ReviewStatus.PENDING
    return ImageOut(
        id=row["id"],
        version=row["version"],
        parent_version=row["parent_version"],
        type=row["kind"],
        status=ImageStatus(row["status"]),
        job_id=row["job_id"],
        story_id=row["story_id"],
        character_id=row["character_id"],
        page_number=row["page_number"],
        url=await links.signed(renditions, _DISPLAY_ORDER),
        cdn_url=links.cdn(renditions),
        thumbnail_url=await links.signed(renditions, _THUMBNAIL_ORDER),
        original_url=await links.signed(renditions, ("original",)),
        print_url=await links.signed(renditions, ("print",)),
        style=row["style"],
        width=row["width"],
        height=row["height"],
        file_size=row["size_bytes"],
        seed=row["seed"],
        model=row["model"],
        provider=row["provider"],
        demo=row["demo"],
        consistency_score=row["consistency_score"],
        flagged=row["flagged"],
        review_status=review,
        created_at=row["created_at"],
        prompt=row["prompt"],
        negative_prompt=row["negative_prompt"],
        scene_description=row["scene_description"],
        scene_source=_scene_source(row["scene_source"]),
        quality_score=row["quality_score"],
        character_scores=json.loads(row["character_scores"]),
        not_scored_reason=row["not_scored_reason"],
    )


async def insert_pending(
    conn: asyncpg.Connection,
    *,
    image_id: str,
    version: int,
    job_id: str,
    user_id: str,
    kind: str,
    style: str,
    character_id: str | None = None,
    story_id: str | None = None,
    page_number: int | None = None,
    parent_version: int | None = None,
    index: int = 0,
) -> None:
    # A row there already of the same job: the projection made it from the events of an
    # earlier attempt of this request (see readmodel.insert_job). Another job's is refused.
    ours = await conn.fetchval(
        "INSERT INTO images (id, version, job_id, user_id, index, kind, status, style,"
        " character_id, story_id, page_number, parent_version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (id, version) DO UPDATE SET job_id = images.job_id"
        " WHERE images.job_id = EXCLUDED.job_id AND images.user_id = EXCLUDED.user_id"
        " RETURNING true",
        image_id,
        version,
        job_id,
        user_id,
        index,
        kind,
        ImageStatus.QUEUED.value,
        style,
        character_id,
        story_id,
        page_number,
        parent_version,
    )
    if not ours:
        raise asyncpg.UniqueViolationError(f"image {image_id} v{version} exists in another job")


async def versions(conn: asyncpg.Connection, user_id: str, image_id: str) -> list[asyncpg.Record]:
    """The user's versions of the image, oldest first, locked until the transaction ends."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_COLUMNS} FROM images WHERE id = $1 AND user_id = $2 ORDER BY version FOR UPDATE",
        image_id,
        user_id,
    )
    return rows


async def list_images(
    pool: asyncpg.Pool,
    links: Links,
    user_id: str,
    where: ImageFilter,
    limit: int,
    after: paging.Cursor | None,
) -> tuple[list[ImageOut], str | None]:
    """One page of the user's images (current versions), newest image first."""
    rows = await pool.fetch(
        "SELECT * FROM ("
        f"  SELECT DISTINCT ON (id) {_COLUMNS}, min(created_at) OVER (PARTITION BY id) AS first_at"
        "   FROM images WHERE user_id = $1 AND status <> 'deleting'"
        "   ORDER BY id, (status = 'completed') DESC, version DESC"
        ") cur"
        " WHERE ($2::text IS NULL OR story_id = $2) AND ($3::text IS NULL OR character_id = $3)"
        " AND ($4::text IS NULL OR kind = $4) AND ($5::text IS NULL OR status = $5)"
        " AND ($6::timestamptz IS NULL OR (first_at, id) < ($6, $7))"
        " ORDER BY first_at DESC, id DESC LIMIT $8",
        user_id,
        where.story_id,
        where.character_id,
        where.type.value if where.type else None,
        where.status.value if where.status else None,
        after[0] if after else None,
        after[1] if after else "",
        limit + 1,
    )
    items = [await to_out(row, links) for row in rows[:limit]]
    more = len(rows) > limit
    cursor = paging.encode(rows[limit - 1]["first_at"], rows[limit - 1]["id"]) if more else None
    return items, cursor


def current(rows: list[asyncpg.Record]) -> asyncpg.Record:
    """The version on show: the newest ready one, else the newest."""
    ready = [r for r in rows if r["status"] == ImageStatus.COMPLETED.value]
    return (ready or rows)[-1]


async def get_image(
    pool: asyncpg.Pool, links: Links, user_id: str, image_id: str
) -> ImageDetail | None:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM images WHERE id = $1 AND user_id = $2 ORDER BY version",
        image_id,
        user_id,
    )
    if not rows or any(r["status"] == ImageStatus.DELETING.value for r in rows):
        return None
    outs = [await to_out(row, links) for row in rows]
    shown = outs[rows.index(current(rows))]
    return ImageDetail(**shown.model_dump(), versions=outs)


async def images_of_job(pool: asyncpg.Pool, links: Links, job_id: str) -> list[ImageOut]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM images WHERE job_id = $1 AND status <> 'deleting'"
        " ORDER BY index, id, version",
        job_id,
    )
    return [await to_out(row, links) for row in rows]
