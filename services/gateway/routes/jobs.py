"""Jobs: packs (`/api/generate`), every kind's status and the user's job list, cancellation."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from schemas.events import JobStatus
from schemas.requests import CancelJob, GenerateImages, JobKind
from services.gateway import characters, gallery, paging, publishing, readmodel
from services.gateway.auth import CurrentUser, Principal
from services.gateway.deps import BlobsDep, PoolDep, PublisherDep, SettingsDep, StateDep
from services.gateway.idempotency import IdempotencyKey
from services.gateway.idempotent_jobs import NewJobDep
from services.gateway.models import ErrorResponse, GenerateAccepted, GenerateRequest, Job
from services.gateway.models_images import (
    ID_PATTERN,
    CancelAccepted,
    JobDetail,
    JobList,
)
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


@router.post(
    "/api/generate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GenerateAccepted,
    responses=errors(401, 404, 409, 422, 429, 503),
    dependencies=[IdempotencyKey, GenerateLimit],
    summary="Generate a pack of 1-23 images of a character in varied poses",
)
async def generate(
    body: GenerateRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    job: NewJobDep,
) -> GenerateAccepted:
    require_acceptable(body.webhook, settings)
    job_id = job.job_id
    base = settings.public_base_url.rstrip("/")
    accepted = GenerateAccepted(
        job_id=job_id,
        status=JobStatus.QUEUED,
        status_url=f"{base}/api/generate/{job_id}",
        events_url=urls(settings, job_id)[1],
    )
    async with pool.acquire() as conn:
        character = await characters.get(conn, user.user_id, body.character_id)
        if character is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"character {body.character_id} not found"
            )
        command = GenerateImages(
            job_id=job_id,
            user_id=user.user_id,
            tier=user.tier,
            kind=JobKind.PACK,
            character=characters.to_spec(character),
            image_count=body.image_count,
            style=character.art_style,
        )
        async with conn.transaction():
            await readmodel.insert_job(
                conn,
                job_id,
                user.user_id,
                kind=JobKind.PACK,
                total=body.image_count,
                character_id=character.id,
                style=character.art_style,
            )
            if body.webhook is not None:
                await webhook_store.register(conn, job_id, user.user_id, body.webhook)
            await job.record(conn, accepted)
            await publishing.send(publisher, settings, user.user_id, command)
    log.info(
        "event=job_accepted job_id=%s user_id=%s images=%d", job_id, user.user_id, body.image_count
    )
    return accepted


@router.get(
    "/api/generate/{job_id}",
    response_model=Job,
    responses=errors(401, 404, 422),
    summary="A pack's status, progress and stored images",
)
async def get_pack(
    job_id: JobId, user: CurrentUser, pool: PoolDep, blobs: BlobsDep, settings: SettingsDep
) -> Job:
    job = await readmodel.get_job(pool, blobs, user.user_id, job_id, settings.signed_url_ttl_s)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job


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
