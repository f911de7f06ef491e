"""Generation requests: a character portrait, a story scene, or a whole story.

Each request reads what it needs (character, story, the estimate's history), writes its job
row (and, where the image id is known up front, a queued image row) and publishes its
command in one transaction: all of it or nothing (a refusal, or a 503). One transaction per
request, beside the rate limits' one statement.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Path, status
from pydantic import ValidationError

from imagegen.kafka import Publisher
from schemas.jobs import image_id_for
from schemas.requests import GenerateImages, GenerateScene, GenerateStory, JobKind
from services.gateway import characters, estimates, gallery, publishing, readmodel, stories
from services.gateway.audiences import job_audience
from services.gateway.auth import CurrentUser
from services.gateway.deps import OffersDep, PoolDep, PublisherDep, SettingsDep
from services.gateway.idempotency import IdempotencyKey
from services.gateway.idempotent_jobs import NewJob, NewJobDep
from services.gateway.models import Story
from services.gateway.models_images import (
    ID_PATTERN,
    ImageJobAccepted,
    PortraitRequest,
    SceneRequest,
    StoryGenerateRequest,
    StoryJobAccepted,
    parse_size,
)
from services.gateway.moderation import ModeratorDep
from services.gateway.problems import field_error
from services.gateway.ratelimit import GenerateLimit
from services.gateway.routes.jobs import errors, urls
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import store as webhook_store
from services.gateway.webhooks.models import WebhookIn
from services.gateway.webhooks.wiring import require_acceptable

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/images", tags=["generation"])

StoryId = Annotated[str, Path(pattern=ID_PATTERN, description="The story's id.")]

_ESTIMATE_DOC = (
    " estimatedCompletionTime: now + (images still outstanding in your unfinished jobs +"
    " this job's images) x the median generation time of recent images (plus a small"
    " allowance for post-processing), assuming your images run one at a time."
)


def _accepted(
    settings: SettingsDep, job_id: str, image_id: str, estimate: estimates.Estimate
) -> ImageJobAccepted:
    status_url, events_url = urls(settings, job_id)
    return ImageJobAccepted(
        job_id=job_id,
        image_id=image_id,
        estimated_completion_time=estimate.completion(),
        status_url=status_url,
        events_url=events_url,
    )


async def _story_or_404(conn: asyncpg.Connection, user_id: str, story_id: str) -> Story:
    story = await stories.get(conn, user_id, story_id)
    if story is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"story {story_id} not found")
    return story


@dataclass(frozen=True)
class _OneImage:
    """What the read model records for a job of one image before the scheduler sees it."""

    kind: JobKind
    image_id: str
    style: str
    character_id: str
    story_id: str | None
    page_number: int | None = None


async def _record_and_send(
    conn: asyncpg.Connection,
    publisher: Publisher,
    settings: GatewaySettings,
    command: GenerateImages | GenerateScene,
    image: _OneImage,
    job: NewJob,
    webhook: WebhookIn | None = None,
) -> ImageJobAccepted:
    """Job row, pending image row, the Idempotency-Key's answer and the command, in the
    caller's (open) transaction: if the publish fails, nothing is recorded (a 503), so a
    retry starts clean. Returns the answer."""
    estimate = await estimates.estimate(conn, command.user_id, 1)
    accepted = _accepted(settings, command.job_id, image.image_id, estimate)
    await readmodel.insert_job(
        conn,
        command.job_id,
        command.user_id,
        kind=image.kind,
        total=1,
        character_id=image.character_id,
        story_id=image.story_id,
        page_number=image.page_number,
        image_id=image.image_id,
        style=image.style,
        audience=command.audience or "general",
    )
    await gallery.insert_pending(
        conn,
        image_id=image.image_id,
        version=1,
        job_id=command.job_id,
        user_id=command.user_id,
        kind=image.kind.value,
        style=image.style,
        character_id=image.character_id,
        story_id=image.story_id,
        page_number=image.page_number,
    )
    if webhook is not None:
        await webhook_store.register(conn, command.job_id, command.user_id, webhook)
    await job.record(conn, accepted)
    await publishing.send(publisher, settings, command.user_id, command)
    return accepted


@router.post(
    "/characters",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImageJobAccepted,
    responses=errors(401, 404, 409, 422, 429, 503),
    dependencies=[IdempotencyKey, GenerateLimit],
    summary="Generate a portrait of a character",
    description="Also builds the character's reference set on first use." + _ESTIMATE_DOC,
)
async def generate_portrait(
    body: PortraitRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    offers: OffersDep,
    job: NewJobDep,
) -> ImageJobAccepted:
    offers.require(body.options.quality, body.options.model, ("body", "options"))
    require_acceptable(body.webhook, settings)
    job_id = job.job_id
    image_id = image_id_for(job_id, 0)
    width, height = parse_size(body.options.size)
    async with pool.acquire() as conn, conn.transaction():
        character = await characters.get(conn, user.user_id, body.character_id)
        if character is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"character {body.character_id} not found"
            )
        if body.story_id is not None:
            await _story_or_404(conn, user.user_id, body.story_id)
        spec = characters.to_spec(character)
        command = GenerateImages(
            job_id=job_id,
            user_id=user.user_id,
            tier=user.tier,
            kind=JobKind.PORTRAIT,
            character=spec,
            audience=job_audience(body.audience, [spec], ("body", "audience")),
            image_count=1,
            style=body.style,
            width=width,
            height=height,
            quality=body.options.quality,
            model=body.options.model,
            story_id=body.story_id,
        )
        # Named as the set's builder in the job's own transaction: a failed publish (503)
        # rolls both back.
        await characters.note_reference_build(conn, character, job_id)
        accepted = await _record_and_send(
            conn,
            publisher,
            settings,
            command,
            _OneImage(JobKind.PORTRAIT, image_id, body.style, character.id, body.story_id),
            job,
            body.webhook,
        )
    log.info("event=portrait_accepted job_id=%s user_id=%s", job_id, user.user_id)
    return accepted


@router.post(
    "/scenes",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ImageJobAccepted,
    responses=errors(401, 404, 409, 422, 429, 503),
    dependencies=[IdempotencyKey, GenerateLimit],
    summary="Illustrate one page of a story with its characters",
    description="sceneDescription defaults to the page's own, then its text." + _ESTIMATE_DOC,
)
async def generate_scene(
    body: SceneRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    moderator: ModeratorDep,
    offers: OffersDep,
    job: NewJobDep,
) -> ImageJobAccepted:
    await moderator.require_allowed({("body", "sceneDescription"): body.scene_description})
    offers.require(body.options.quality, body.options.model, ("body", "options"))
    require_acceptable(body.webhook, settings)
    job_id = job.job_id
    image_id = image_id_for(job_id, 0)
    async with pool.acquire() as conn, conn.transaction():
        story = await _story_or_404(conn, user.user_id, body.story_id)
        page = next((p for p in story.pages if p.page_number == body.page_number), None)
        if page is None:
            numbers = ", ".join(str(p.page_number) for p in story.pages) or "none"
            raise field_error(
                ("body", "pageNumber"),
                f"story {story.id} has no page {body.page_number} (its pages: {numbers})",
            )
        if len(set(body.character_ids)) != len(body.character_ids):
            raise field_error(("body", "characterIds"), "a character is listed twice")
        cast = await characters.get_many(conn, user.user_id, body.character_ids)
        for i, ident in enumerate(body.character_ids):
            if ident not in cast:
                raise HTTPException(
                    status.HTTP_404_NOT_FOUND, f"characterIds[{i}]: character {ident} not found"
                )
            if ident not in story.character_ids:
                raise field_error(
                    ("body", "characterIds", i),
                    f"character {ident} is not one of story {story.id}'s characters",
                )
        options = body.options
        specs = [characters.to_spec(cast[i]) for i in body.character_ids]
        command = GenerateScene(
            job_id=job_id,
            user_id=user.user_id,
            tier=user.tier,
            story_id=story.id,
            page_number=page.page_number,
            characters=specs,
            audience=job_audience(body.audience, specs, ("body", "audience")),
            scene_description=body.scene_description or page.scene_description or "",
            page_text=page.text,
            include_text=options.include_text,
            aspect_ratio=options.aspect_ratio,
            style=body.style,
            quality=options.quality,
            model=options.model,
        )
        accepted = await _record_and_send(
            conn,
            publisher,
            settings,
            command,
            _OneImage(
                JobKind.SCENE,
                image_id,
                body.style,
                body.character_ids[0],
                story.id,
                page.page_number,
            ),
            job,
            body.webhook,
        )
    log.info("event=scene_accepted job_id=%s story_id=%s", job_id, story.id)
    return accepted


@router.post(
    "/stories/{story_id}/generate-all",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=StoryJobAccepted,
    responses=errors(401, 404, 409, 422, 429, 503),
    dependencies=[IdempotencyKey, GenerateLimit],
    summary="Illustrate a whole story: portraits of its characters, then every page",
    description=(
        "totalImages = characters (if includeCharacterPortraits) + pages x imagesPerPage"
        " (if includeSceneImages). Paid users' stories run on the standard tier, free users'"
        " on economy." + _ESTIMATE_DOC
    ),
)
async def generate_story(
    story_id: StoryId,
    body: StoryGenerateRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    offers: OffersDep,
    job: NewJobDep,
) -> StoryJobAccepted:
    offers.require(body.options.quality, body.options.model, ("body", "options"))
    if not (body.include_character_portraits or body.include_scene_images):
        raise field_error(
            ("body", "includeSceneImages"),
            "nothing to generate: includeCharacterPortraits and includeSceneImages are both false",
        )
    require_acceptable(body.webhook, settings)
    job_id = job.job_id
    async with pool.acquire() as conn, conn.transaction():
        await _story_or_404(conn, user.user_id, story_id)
        try:
            spec = await stories.load_spec(conn, user.user_id, story_id)
        except ValidationError as exc:
            raise field_error(
                ("path", "story_id"),
                f"story {story_id} cannot be illustrated as it is: {exc.errors()[0]['msg']}",
            ) from exc
        if spec is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"story {story_id} not found")
        total = (len(spec.characters) if body.include_character_portraits else 0) + (
            len(spec.pages) * body.images_per_page if body.include_scene_images else 0
        )
        options = body.options
        command = GenerateStory(
            job_id=job_id,
            user_id=user.user_id,
            tier=user.tier,
            story=spec,
            audience=job_audience(body.audience, spec.characters, ("body", "audience")),
            style=body.style,
            include_character_portraits=body.include_character_portraits,
            include_scene_images=body.include_scene_images,
            images_per_page=body.images_per_page,
            include_text=options.include_text,
            aspect_ratio=options.aspect_ratio,
            quality=options.quality,
            model=options.model,
        )
        estimate = await estimates.estimate(conn, user.user_id, total)
        status_url, events_url = urls(settings, job_id)
        accepted = StoryJobAccepted(
            batch_job_id=job_id,
            total_images=total,
            estimated_completion_time=estimate.completion(),
            status_url=status_url,
            events_url=events_url,
        )
        await readmodel.insert_job(
            conn,
            job_id,
            user.user_id,
            kind=JobKind.STORY,
            total=total,
            story_id=story_id,
            style=body.style,
            audience=command.audience or "general",
        )
        if body.webhook is not None:
            await webhook_store.register(conn, job_id, user.user_id, body.webhook)
        await job.record(conn, accepted)
        await publishing.send(publisher, settings, user.user_id, command)
    log.info("event=story_accepted job_id=%s story_id=%s images=%d", job_id, story_id, total)
    return accepted
