"""`/api/generate`: accept a pack job (publish the command) and report its progress."""

from __future__ import annotations

import asyncio
import logging
import uuid

from fastapi import APIRouter, HTTPException, status

from schemas.events import JobStatus
from schemas.requests import GenerateImages, JobKind
from services.gateway import characters, readmodel
from services.gateway.auth import CurrentUser
from services.gateway.deps import BlobsDep, PoolDep, PublisherDep, SettingsDep
from services.gateway.models import GenerateAccepted, GenerateRequest, Job

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/generate", tags=["jobs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=GenerateAccepted)
async def generate(
    body: GenerateRequest,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
) -> GenerateAccepted:
    job_id = str(uuid.uuid4())
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
        # The row and the command stand or fall together: the row is committed only once
        # the broker has the command, and rolled back if it never gets it.
        async with conn.transaction():
            await readmodel.insert_job(conn, job_id, user.user_id, character.id, body.image_count)
            try:
                await asyncio.wait_for(
                    publisher.publish(settings.kafka.topics.requests, user.user_id, command),
                    settings.publish_timeout_s,
                )
            except Exception as exc:
                log.warning(
                    "event=publish_failed job_id=%s user_id=%s error=%r",
                    job_id,
                    user.user_id,
                    exc,
                )
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    "the job queue is unavailable; nothing was created, please retry",
                    headers={"Retry-After": "5"},
                ) from exc
    log.info(
        "event=job_accepted job_id=%s user_id=%s images=%d", job_id, user.user_id, body.image_count
    )
    base = settings.public_base_url.rstrip("/")
    return GenerateAccepted(
        job_id=job_id,
        status=JobStatus.QUEUED,
        status_url=f"{base}/api/generate/{job_id}",
        events_url=f"{base}/api/v1/jobs/{job_id}/events",
    )


@router.get("/{job_id}", response_model=Job)
async def get_job(
    job_id: str, user: CurrentUser, pool: PoolDep, blobs: BlobsDep, settings: SettingsDep
) -> Job:
    job = await readmodel.get_job(pool, blobs, user.user_id, job_id, settings.signed_url_ttl_s)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job
