"""Jobs: packs (`/api/generate`), every kind's status and the user's job list, cancellation."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated

import asyncpg
from fastapi import APIRouter, HTTPException, Path, Query, status

from schemas.characters import CharacterSpec
from schemas.events import JobStatus
from schemas.jobs import image_id_for
from schemas.requests import PROMPT_CHARACTER_PREFIX, CancelJob, GenerateImages, JobKind
from services.gateway import characters, gallery, paging, publishing, readmodel
from services.gateway.audiences import job_audience
from services.gateway.auth import CurrentUser, Principal
from services.gateway.deps import (
    BlobsDep,
    OffersDep,
    PoolDep,
    PublisherDep,
    SettingsDep,
    StateDep,
)
from services.gateway.idempotency import IdempotencyKey
from services.gateway.idempotent_jobs import NewJobDep
from services.gateway.models import ErrorResponse, GenerateAccepted, GenerateRequest, Job
from services.gateway.models_images import (
    ID_PATTERN,
    PHOTO_GROUP_SIZES,
    CancelAccepted,
    JobDetail,
    JobList,
)
from services.gateway.moderation import ModeratorDep
from services.gateway.problems import field_error
from services.gateway.ratelimit import GenerateLimit
from services.gateway.settings import GatewaySettings
from services.gateway.webhooks import store as webhook_store
from services.gateway.webhooks.wiring import require_acceptable

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

JobId = Annotated[str, Path(pattern=ID_PATTERN, description="A job id from a 202 response.")]


def errors(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI entries for the error responses an endpoint may give (`detail` is a message,
    or a list of problems naming their fields: 422s and the idempotency middleware's)."""
    text = {
        401: "Missing, expired or invalid bearer token",
        404: "Not found, or not yours",
        409: "Conflicts with the current state; the message says which",
        422: "A field is invalid; the error names it",
        429: "Rate limit exceeded; retry after Retry-After seconds",
        503: "The job queue is unavailable; nothing was created, retry",
    }
    return {code: {"model": ErrorResponse, "description": text[code]} for code in codes}


def links(state: StateDep) -> gallery.Links:
    settings = state.settings
    return gallery.Links(
        blobs=state.blobs,
        ttl_s=settings.signed_url_ttl_s,
        cdn_base_url=settings.s3.cdn_base_url,
        cdn_signer=state.cdn_signer,
    )


def urls(settings: GatewaySettings, job_id: str) -> tuple[str, str]:
    """The job's status and event-stream URLs."""
    base = settings.public_base_url.rstrip("/")
    return f"{base}/api/v1/jobs/{job_id}", f"{base}/api/v1/jobs/{job_id}/events"


_GENERATE_DOC = (
    "The body decides the job. With `character_id`: a pack of `image_count` (1-23) images of"
    " the character in varied poses; with `photo_group` (professional, lifestyle, creative,"
    " all) a photo pack drawing on that group's photo prompts, which needs 5-8 uploaded"
    " reference photos. With `prompt` and no character: a prompt-only image (`width`,"
    " `height`, `style`), moderated, budgeted and prioritised like every job; poll"
    " `GET /api/generate/{job_id}` for `status` and `result_url`. `style`, `size` (or"
    " `width`+`height`), `quality` (draft, standard, high; `hd` accepted) and `model` apply to"
    " both; a model or quality no configured provider offers is a 422 naming those on offer."
    " This endpoint's style is snake_case; camelCase input is accepted too."
)
_MIN_PHOTOS = 5


def _size(body: GenerateRequest) -> tuple[int, int]:
    if body.size is not None:
        if body.width is not None or body.height is not None:
            raise field_error(("body", "size"), "give size or width and height, not both")
        width, _, height = body.size.partition("x")
        w, h = int(width), int(height)
        for name, value in (("width", w), ("height", h)):
            if not 256 <= value <= 2048 or value % 8:
                raise field_error(
                    ("body", "size"), f"{name} {value} must be 256-2048 and a multiple of 8"
                )
        return w, h
    return body.width or 1024, body.height or 1024


async def _pack_command(
    body: GenerateRequest, conn: asyncpg.Connection, user: Principal, job_id: str
) -> GenerateImages:
    assert body.character_id is not None
    character = await characters.get(conn, user.user_id, body.character_id)
    if character is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"character {body.character_id} not found")
    group = body.photo_group
    if group is not None and len(character.photos) < _MIN_PHOTOS:
        raise field_error(
            ("body", "character_id"),
            f"a photo pack needs 5-8 reference photos of the character; {character.id} has"
            f" {len(character.photos)}: upload more with POST /api/v1/characters/{character.id}"
            "/reference-photos",
        )
    count = body.image_count
    if count is None:
        if group is None:
            raise field_error(("body", "image_count"), "required for a pack (1-23)")
        count = PHOTO_GROUP_SIZES[group]
    width, height = _size(body)
    spec = characters.to_spec(character)
    return GenerateImages(
        job_id=job_id,
        user_id=user.user_id,
        tier=user.tier,
        kind=JobKind.PACK,
        character=spec,
        audience=job_audience(body.audience, [spec], ("body", "audience")),
        image_count=count,
        style=body.style or character.art_style,
        width=width,
        height=height,
        quality=body.quality,
        model=body.model,
        photo_group=group,
    )


def _prompt_command(body: GenerateRequest, user: Principal, job_id: str) -> GenerateImages:
    assert body.prompt is not None
    if body.photo_group is not None:
        raise field_error(("body", "photo_group"), "a photo pack needs a character_id")
    width, height = _size(body)
    # A stand-in character: it owns the images (storage's layout) and seeds them.
    seed = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big")
    stand_in = CharacterSpec(id=f"{PROMPT_CHARACTER_PREFIX}{job_id}", name="prompt", seed=seed)
    return GenerateImages(
        job_id=job_id,
        user_id=user.user_id,
        tier=user.tier,
        kind=JobKind.PROMPT,
        character=stand_in,
        image_count=body.image_count or 1,
        style=body.style or "standard",
        width=width,
        height=height,
        quality=body.quality,
        model=body.model,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt or "",
        audience=body.audience or "general",
    )


@router.post(
    "/api/generate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GenerateAccepted,
    responses=errors(401, 404, 409, 422, 429, 503),
    dependencies=[IdempotencyKey, GenerateLimit],
    summary="Generate a pack of a character (1-23 images) or an image from a prompt alone",
    description=_GENERATE_DOC,
)
async def generate(
    body: GenerateRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    moderator: ModeratorDep,
    offers: OffersDep,
    job: NewJobDep,
) -> GenerateAccepted:
    if (body.character_id is None) == (body.prompt is None):
        raise field_error(
            ("body", "prompt" if body.prompt is not None else "character_id"),
            "give character_id (a pack of that character) or prompt (a prompt-only image), not both"
            if body.prompt is not None
            else "give character_id or prompt",
        )
    await moderator.require_allowed(
        {("body", "prompt"): body.prompt, ("body", "negative_prompt"): body.negative_prompt}
    )
    offers.require(body.quality, body.model, ("body",))
    require_acceptable(body.webhook, settings)
    job_id = job.job_id
    base = settings.public_base_url.rstrip("/")
    # The character is read in the job's own transaction (one transaction per request, its
    # read a single statement): a refusal (404, 422) rolls back having written nothing.
    async with pool.acquire() as conn, conn.transaction():
        if body.character_id is not None:
            command = await _pack_command(body, conn, user, job_id)
        else:
            command = _prompt_command(body, user, job_id)
        accepted = GenerateAccepted(
            job_id=job_id,
            job_id_camel=job_id,
            status=JobStatus.QUEUED,
            kind=command.kind.value,
            image_count=command.image_count,
            status_url=f"{base}/api/generate/{job_id}",
            events_url=urls(settings, job_id)[1],
        )
        prompt_only = command.kind is JobKind.PROMPT
        await readmodel.insert_job(
            conn,
            job_id,
            user.user_id,
            kind=command.kind,
            total=command.image_count,
            character_id=None if prompt_only else command.character.id,
            image_id=image_id_for(job_id, 0) if command.image_count == 1 else None,
            style=command.style,
            audience=command.audience or "general",
        )
        if body.webhook is not None:
            await webhook_store.register(conn, job_id, user.user_id, body.webhook)
        await job.record(conn, accepted)
        await publishing.send(publisher, settings, user.user_id, command)
    log.info(
        "event=job_accepted job_id=%s user_id=%s kind=%s images=%d",
        job_id,
        user.user_id,
        command.kind.value,
        command.image_count,
    )
    return accepted


async def _pack_status(
    job_id: str, user: Principal, pool: PoolDep, blobs: BlobsDep, settings: SettingsDep
) -> Job:
    job = await readmodel.get_job(pool, blobs, user.user_id, job_id, settings.signed_url_ttl_s)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    first = next((i.url for i in job.images if i.url), None)
    return job.model_copy(update={"result_url": first})


@router.get(
    "/api/generate/{job_id}",
    response_model=Job,
    responses=errors(401, 404, 422),
    summary="A pack's or prompt-only job's status, progress, stored images and result_url",
)
async def get_pack(
    job_id: JobId, user: CurrentUser, pool: PoolDep, blobs: BlobsDep, settings: SettingsDep
) -> Job:
    return await _pack_status(job_id, user, pool, blobs, settings)


@router.get(
    "/api/generate/status/{job_id}",
    response_model=Job,
    responses=errors(401, 404, 422),
    summary="The same as GET /api/generate/{job_id} (the Modal summary's polling path)",
)
async def get_pack_status(
    job_id: JobId, user: CurrentUser, pool: PoolDep, blobs: BlobsDep, settings: SettingsDep
) -> Job:
    return await _pack_status(job_id, user, pool, blobs, settings)


async def _cancel(
    job_id: str, user: Principal, pool: PoolDep, publisher: PublisherDep, settings: SettingsDep
) -> CancelAccepted:
    current = await readmodel.job_status(pool, user.user_id, job_id)
    if current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    if current.terminal:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is already {current.value}; only queued or running jobs can be"
            " cancelled",
        )
    await publishing.send(
        publisher, settings, user.user_id, CancelJob(job_id=job_id, user_id=user.user_id)
    )
    log.info("event=cancel_requested job_id=%s user_id=%s", job_id, user.user_id)
    return CancelAccepted(job_id=job_id, status=current)


_CANCEL_DOC = (
    "Undispatched images are dropped, running ones stop at their next step, reserved budget"
    " is released. The job becomes `cancelled` when the scheduler confirms (job_cancelled)."
)


@router.post(
    "/api/generate/{job_id}/cancel",
    response_model=CancelAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(401, 404, 409, 422, 503),
    dependencies=[IdempotencyKey],
    summary="Cancel a pack",
    description=_CANCEL_DOC,
)
async def cancel_pack(
    job_id: JobId, user: CurrentUser, pool: PoolDep, publisher: PublisherDep, settings: SettingsDep
) -> CancelAccepted:
    return await _cancel(job_id, user, pool, publisher, settings)


@router.post(
    "/api/v1/jobs/{job_id}/cancel",
    response_model=CancelAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=errors(401, 404, 409, 422, 503),
    dependencies=[IdempotencyKey],
    summary="Cancel any job",
    description=_CANCEL_DOC,
)
async def cancel_job(
    job_id: JobId, user: CurrentUser, pool: PoolDep, publisher: PublisherDep, settings: SettingsDep
) -> CancelAccepted:
    return await _cancel(job_id, user, pool, publisher, settings)


@router.get(
    "/api/v1/jobs",
    response_model=JobList,
    responses=errors(401, 422),
    summary="The caller's jobs, newest first",
)
async def list_jobs(
    user: CurrentUser,
    pool: PoolDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: paging.LimitQuery = 20,
    cursor: paging.CursorQuery = None,
) -> JobList:
    items, next_cursor = await readmodel.list_jobs(
        pool, user.user_id, status_filter, kind, limit, paging.decode(cursor)
    )
    return JobList(items=items, next_cursor=next_cursor)


@router.get(
    "/api/v1/jobs/{job_id}",
    response_model=JobDetail,
    responses=errors(401, 404, 422),
    summary="Any job's status: kind, progress, counts, why it ended short, cost, images",
)
async def get_job(job_id: JobId, user: CurrentUser, pool: PoolDep, state: StateDep) -> JobDetail:
    job = await readmodel.job_detail(pool, links(state), user.user_id, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    hook = await webhook_store.job_webhook(pool, job_id)
    return job if hook is None else job.model_copy(update={"webhook": hook})
