"""`/api/v1/stories`: the caller's stories (create, read, update, list, delete).

Illustrating a story is `POST /api/v1/images/stories/{storyId}/generate-all`.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Body, Path, Response, status

from schemas.requests import DeleteStory
from services.gateway import paging, publishing, stories
from services.gateway.auth import CurrentUser
from services.gateway.deps import PoolDep, PublisherDep, SettingsDep
from services.gateway.idempotency import IdempotencyKey
from services.gateway.models import _STORY_EXAMPLE, Story, StoryCreate, StoryList, StoryUpdate
from services.gateway.moderation import ModeratorDep, texts_of
from services.gateway.problems import not_found, responses

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/stories", tags=["stories"])

StoryId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$",
        description="A story id returned by POST /api/v1/stories.",
    ),
]


async def moderate_story(moderator: ModeratorDep, body: StoryCreate | StoryUpdate) -> None:
    """Title, page texts and scene descriptions, each named by its field."""
    fields = body.model_dump(by_alias=True, exclude_unset=True, exclude={"character_ids"})
    for page in fields.get("pages", []):
        page.pop("characterIds", None)
    await moderator.require_allowed(texts_of(fields, ("body",)))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Story,
    dependencies=[IdempotencyKey],
    responses=responses(401, 409, 422, 429),
    summary="Create a story",
)
async def create_story(
    body: Annotated[StoryCreate, Body(openapi_examples={"lighthouse": {"value": _STORY_EXAMPLE}})],
    user: CurrentUser,
    pool: PoolDep,
    moderator: ModeratorDep,
) -> Story:
    """`characterIds` must be your characters; each page's characters come from them."""
    await moderate_story(moderator, body)
    async with pool.acquire() as conn, conn.transaction():
        await stories.check_cast(conn, user.user_id, body.character_ids, body.pages)
        story = await stories.create(conn, user.user_id, body)
    log.info(
        "event=story_created user_id=%s story_id=%s pages=%d",
        user.user_id,
        story.id,
        len(story.pages),
    )
    return story


@router.get(
    "", response_model=StoryList, responses=responses(401, 422, 429), summary="List stories"
)
async def list_stories(
    user: CurrentUser,
    pool: PoolDep,
    limit: paging.LimitQuery = 50,
    cursor: paging.CursorQuery = None,
) -> StoryList:
    """Newest first; follow `nextCursor` for the next page (null on the last one)."""
    rows = await stories.list_for(pool, user.user_id, limit + 1, paging.decode(cursor))
    page = rows[:limit]
    next_cursor = paging.encode(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return StoryList(items=page, next_cursor=next_cursor)


@router.get(
    "/{story_id}",
    response_model=Story,
    responses=responses(401, 404, 422, 429),
    summary="Get a story",
)
async def get_story(story_id: StoryId, user: CurrentUser, pool: PoolDep) -> Story:
    story = await stories.get(pool, user.user_id, story_id)
    if story is None:
        raise not_found("story", story_id)
    return story


@router.patch(
    "/{story_id}",
    response_model=Story,
    responses=responses(401, 404, 422, 429),
    summary="Update a story (partial)",
)
async def update_story(
    story_id: StoryId,
    body: Annotated[
        StoryUpdate,
        Body(openapi_examples={"retitle": {"value": {"title": "Mia and the Sea"}}}),
    ],
    user: CurrentUser,
    pool: PoolDep,
    moderator: ModeratorDep,
) -> Story:
    """Only the fields sent change; `pages` and `characterIds` are replaced whole."""
    await moderate_story(moderator, body)
    async with pool.acquire() as conn, conn.transaction():
        current = await stories.get(conn, user.user_id, story_id, for_update=True)
        if current is None:
            raise not_found("story", story_id)
        merged = stories.merged(current, body)
        await stories.check_cast(conn, user.user_id, merged.character_ids, merged.pages)
        return await stories.update(conn, user.user_id, story_id, merged)


@router.delete(
    "/{story_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 404, 422, 429, 503),
    summary="Delete a story",
)
async def delete_story(
    story_id: StoryId,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
) -> Response:
    """Storage then deletes the images of its pages (every version and rendition) and
    confirms each with image_deleted; its jobs' records are kept."""
    async with pool.acquire() as conn, conn.transaction():
        if not await stories.delete(conn, user.user_id, story_id):
            raise not_found("story", story_id)
        command = DeleteStory(story_id=story_id, user_id=user.user_id)
        await publishing.send(publisher, settings, user.user_id, command)
    log.info("event=story_deleted user_id=%s story_id=%s", user.user_id, story_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
