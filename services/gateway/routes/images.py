"""`/api/v1/images`: the caller's images and their versions; regenerate, delete, review.

Deletes and reviews are carried out by the storage service (DeleteImage / ReviewImage on
`requests`). A deleted image disappears from every listing at once (marked deleting) and
its rows go when storage confirms with image_deleted. A review is *not* optimistic:
`reviewStatus` reads `pending` until storage confirms with image_reviewed, because storage
holds the record of truth and may have nothing to review (e.g. the image was deleted).
"""

from __future__ import annotations

import logging
from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, status

from schemas.requests import (
    MAX_REGENERATIONS,
    DeleteImage,
    ImageModifications,
    JobKind,
    RegenerateImage,
    ReviewImage,
)
from services.gateway import estimates, gallery, paging, publishing, readmodel
from services.gateway.auth import CurrentUser
from services.gateway.deps import PoolDep, PublisherDep, SettingsDep, StateDep
from services.gateway.idempotency import IdempotencyKey
from services.gateway.idempotent_jobs import NewJobDep
from services.gateway.models_images import (
    ID_PATTERN,
    DeleteAccepted,
    ImageDetail,
    ImageList,
    ImageStatus,
    ImageType,
    RegenerateAccepted,
    RegenerateRequest,
    ReviewAccepted,
    ReviewRequest,
)
from services.gateway.moderation import ModeratorDep
from services.gateway.ratelimit import GenerateLimit
from services.gateway.routes.jobs import errors, links, urls

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/images", tags=["images"])

ImageId = Annotated[str, Path(pattern=ID_PATTERN, description="The image's id.")]


def _not_found(image_id: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"image {image_id} not found")


def _visible(rows: list[asyncpg.Record], image_id: str) -> None:
    """404 unless the user has the image and it is not being deleted."""
    if not rows or any(r["status"] == ImageStatus.DELETING.value for r in rows):
        raise _not_found(image_id)


@router.get(
    "",
    response_model=ImageList,
    responses=errors(401, 422),
    summary="The caller's images (current version of each), newest first",
)
async def list_images(
    user: CurrentUser,
    pool: PoolDep,
    state: StateDep,
    story_id: Annotated[str | None, Query(alias="storyId", pattern=ID_PATTERN)] = None,
    character_id: Annotated[str | None, Query(alias="characterId", pattern=ID_PATTERN)] = None,
    image_type: Annotated[ImageType | None, Query(alias="type")] = None,
    image_status: Annotated[ImageStatus | None, Query(alias="status")] = None,
    limit: paging.LimitQuery = 20,
    cursor: paging.CursorQuery = None,
    # snake_case spellings, accepted on input like every body's (documented: camelCase).
    story_id_snake: Annotated[
        str | None, Query(alias="story_id", pattern=ID_PATTERN, include_in_schema=False)
    ] = None,
    character_id_snake: Annotated[
        str | None, Query(alias="character_id", pattern=ID_PATTERN, include_in_schema=False)
    ] = None,
) -> ImageList:
    story_id = story_id or story_id_snake
    character_id = character_id or character_id_snake
    where = gallery.ImageFilter(story_id, character_id, image_type, image_status)
    items, next_cursor = await gallery.list_images(
        pool, links(state), user.user_id, where, limit, paging.decode(cursor)
    )
    return ImageList(images=items, items=items, next_cursor=next_cursor)


@router.get(
    "/{image_id}",
    response_model=ImageDetail,
    responses=errors(401, 404, 422),
    summary="One image (its current version) with every version",
)
async def get_image(
    image_id: ImageId, user: CurrentUser, pool: PoolDep, state: StateDep
) -> ImageDetail:
    image = await gallery.get_image(pool, links(state), user.user_id, image_id)
    if image is None:
        raise _not_found(image_id)
    return image


@router.post(
    "/{image_id}/regenerate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RegenerateAccepted,
    responses=errors(401, 404, 409, 422, 429, 503),
    dependencies=[IdempotencyKey, GenerateLimit],
    summary="Make a new version of an image; the original is kept",
    description=(
        f"The new version is the latest + 1, linked to the version on show (its parent)."
        f" At most {MAX_REGENERATIONS} regenerations per image: the next is refused with 409."
    ),
)
async def regenerate(
    image_id: ImageId,
    body: RegenerateRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    moderator: ModeratorDep,
    job: NewJobDep,
) -> RegenerateAccepted:
    await moderator.require_allowed(
        {("body", "modifications", "prompt"): body.modifications.prompt}
    )
    job_id = job.job_id
    mods = body.modifications
    async with pool.acquire() as conn, conn.transaction():
        rows = await gallery.versions(conn, user.user_id, image_id)
        _visible(rows, image_id)
        if not any(r["status"] == ImageStatus.COMPLETED.value for r in rows):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"image {image_id} has no finished version to regenerate yet",
            )
        latest = rows[-1]["version"]
        if latest > MAX_REGENERATIONS:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"image {image_id} has reached the limit of {MAX_REGENERATIONS} regenerations"
                f" (versions 1 to {MAX_REGENERATIONS + 1}); generate a new image instead",
            )
        parent = gallery.current(rows)
        version = latest + 1
        estimate = await estimates.estimate(conn, user.user_id, 1)
        # The new version is held to its original's audience (the scheduler copies it).
        audience = await conn.fetchval("SELECT audience FROM jobs WHERE id = $1", parent["job_id"])
        await readmodel.insert_job(
            conn,
            job_id,
            user.user_id,
            kind=JobKind.REGENERATE,
            total=1,
            character_id=parent["character_id"],
            story_id=parent["story_id"],
            page_number=parent["page_number"],
            image_id=image_id,
            style=mods.style or parent["style"],
            audience=audience or "general",
        )
        await gallery.insert_pending(
            conn,
            image_id=image_id,
            version=version,
            job_id=job_id,
            user_id=user.user_id,
            kind=parent["kind"],
            style=mods.style or parent["style"],
            character_id=parent["character_id"],
            story_id=parent["story_id"],
            page_number=parent["page_number"],
            parent_version=parent["version"],
            index=0,
        )
        command = RegenerateImage(
            job_id=job_id,
            user_id=user.user_id,
            tier=user.tier,
            image_id=image_id,
            version=version,
            modifications=ImageModifications(style=mods.style, prompt=mods.prompt, seed=mods.seed),
        )
        status_url, events_url = urls(settings, job_id)
        accepted = RegenerateAccepted(
            job_id=job_id,
            image_id=image_id,
            new_image_id=image_id,
            version=version,
            parent_version=parent["version"],
            estimated_completion_time=estimate.completion(),
            status_url=status_url,
            events_url=events_url,
        )
        await job.record(conn, accepted)
        await publishing.send(publisher, settings, user.user_id, command)
    log.info(
        "event=regenerate_accepted job_id=%s image_id=%s version=%d", job_id, image_id, version
    )
    return accepted


@router.delete(
    "/{image_id}",
    status_code=status.HTTP_200_OK,
    response_model=DeleteAccepted,
    responses=errors(401, 404, 409, 422, 503),
    summary="Delete an image and all its versions",
    description="200 `{message, imageId, status}`: hidden at once; storage removes the files"
    " and confirms (image_deleted).",
)
async def delete_image(
    image_id: ImageId,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
) -> DeleteAccepted:
    async with pool.acquire() as conn, conn.transaction():
        rows = await gallery.versions(conn, user.user_id, image_id)
        _visible(rows, image_id)
        if not any(r["status"] == ImageStatus.COMPLETED.value for r in rows):
            # Storage has nothing to delete yet; the image would come back when stored.
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"image {image_id} is not stored yet; cancel job {rows[-1]['job_id']} instead",
            )
        await conn.execute(
            "UPDATE images SET status = $3 WHERE id = $1 AND user_id = $2",
            image_id,
            user.user_id,
            ImageStatus.DELETING.value,
        )
        command = DeleteImage(image_id=image_id, user_id=user.user_id)
        await publishing.send(publisher, settings, user.user_id, command)
    log.info("event=delete_requested image_id=%s user_id=%s", image_id, user.user_id)
    return DeleteAccepted(image_id=image_id)


@router.post(
    "/{image_id}/review",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReviewAccepted,
    responses=errors(401, 404, 409, 422, 503),
    dependencies=[IdempotencyKey],
    summary="Approve or reject the image's current version",
    description="reviewStatus is `pending` until storage confirms (image_reviewed).",
)
async def review_image(
    image_id: ImageId,
    body: ReviewRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
) -> ReviewAccepted:
    async with pool.acquire() as conn, conn.transaction():
        rows = await gallery.versions(conn, user.user_id, image_id)
        _visible(rows, image_id)
        target = gallery.current(rows)
        if target["status"] != ImageStatus.COMPLETED.value:
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"image {image_id} has no finished version to review"
            )
        await conn.execute(
            "UPDATE images SET pending_review = $3 WHERE id = $1 AND version = $2",
            image_id,
            target["version"],
            body.decision.value,
        )
        command = ReviewImage(image_id=image_id, user_id=user.user_id, decision=body.decision)
        await publishing.send(publisher, settings, user.user_id, command)
    return ReviewAccepted(image_id=image_id, version=target["version"], decision=body.decision)
