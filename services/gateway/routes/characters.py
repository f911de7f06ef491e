"""`/api/v1/characters`: the caller's own characters (create, read, update, list, delete)
and their reference set.

Changing a character's look (description, attributes, style modifiers, art style, seed:
what `CharacterSpec.appearance_fingerprint()` covers) marks an existing reference set
stale and queues a new one (a `reference` job the user can follow). A character without
a reference set gets one with its first portrait, or on POST .../reference-set.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Request, Response, status

from imagegen.errors import ImagegenError
from schemas.characters import CharacterLora
from schemas.events import JobStatus
from schemas.requests import DeleteCharacter
from services.gateway import characters, paging, publishing
from services.gateway.auth import CurrentUser, Principal
from services.gateway.characters import CharacterRecord
from services.gateway.deps import BlobsDep, PoolDep, PublisherDep, SettingsDep
from services.gateway.idempotency import IdempotencyKey
from services.gateway.idempotent_jobs import NewJobDep
from services.gateway.models import (
    _CHARACTER_EXAMPLE,
    Character,
    CharacterCreate,
    CharacterList,
    CharacterUpdate,
    ReferenceSetAccepted,
    ReferenceSetStatus,
)
from services.gateway.moderation import ModeratorDep, texts_of
from services.gateway.problems import field_error, not_found, responses
from services.gateway.ratelimit import GenerateLimit
from services.gateway.routes import lora_input
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/characters", tags=["characters"])

CharacterId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$",
        description="A character id returned by POST /api/v1/characters.",
    ),
]


def _unavailable(exc: BaseException) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the job queue is unavailable; nothing was changed, please retry",
        headers={"Retry-After": "5"},
    )


async def moderate_character(
    moderator: ModeratorDep, body: CharacterCreate | CharacterUpdate
) -> None:
    """Every text the character would carry, each named by its field."""
    fields = body.model_dump(by_alias=True, exclude_unset=True, exclude={"seed"})
    await moderator.require_allowed(texts_of(fields, ("body",)))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Character,
    dependencies=[IdempotencyKey],
    responses=responses(401, 409, 422, 429),
    summary="Create a character",
)
async def create_character(
    body: Annotated[
        CharacterCreate, Body(openapi_examples={"storybook": {"value": _CHARACTER_EXAMPLE}})
    ],
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    moderator: ModeratorDep,
    new: NewJobDep,
    request: Request,
) -> Character:
    await moderate_character(moderator, body)
    lora = None
    if body.lora_model_url is not None:
        # Fetched and checked before the character exists: a bad file creates nothing.
        lora = await lora_input.lora_from_url(
            request,
            settings,
            blobs,
            user.user_id,
            new.job_id,
            body.lora_model_url,
            trigger_word=body.lora_trigger_word or "",
            weight=1.0 if body.lora_weight is None else body.lora_weight,
        )
    elif body.lora_trigger_word is not None or body.lora_weight is not None:
        raise field_error(
            ("body", "loraModelUrl"),
            "a LoRA trigger word or weight needs the LoRA: give loraModelUrl"
            " (or upload the file with PUT .../lora)",
        )
    # With an Idempotency-Key the character takes the id its claim keeps, and the answer is
    # stored in the same transaction: a crash before the middleware stores it cannot make a
    # second character on the retry (idempotent_jobs.py).
    async with pool.acquire() as conn, conn.transaction():
        record = await characters.create(conn, user.user_id, body, new.job_id, lora)
        view = await characters.view(blobs, record, settings.signed_url_ttl_s)
        await new.record(conn, view, status.HTTP_201_CREATED)
    log.info("event=character_created user_id=%s character_id=%s", user.user_id, record.id)
    return view


@router.get(
    "", response_model=CharacterList, responses=responses(401, 422, 429), summary="List characters"
)
async def list_characters(
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    limit: paging.LimitQuery = 50,
    cursor: paging.CursorQuery = None,
) -> CharacterList:
    """Newest first; follow `nextCursor` for the next page (null on the last one)."""
    records = await characters.list_for(pool, user.user_id, limit + 1, paging.decode(cursor))
    page = records[:limit]
    next_cursor = None
    if len(records) > limit:
        next_cursor = paging.encode(page[-1].created_at, page[-1].id)
    return CharacterList(
        items=[await characters.view(blobs, r, settings.signed_url_ttl_s) for r in page],
        next_cursor=next_cursor,
    )


@router.get(
    "/{character_id}",
    response_model=Character,
    responses=responses(401, 404, 422, 429),
    summary="Get a character",
)
async def get_character(
    character_id: CharacterId,
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> Character:
    record = await characters.get(pool, user.user_id, character_id)
    if record is None:
        raise not_found("character", character_id)
    return await characters.view(blobs, record, settings.signed_url_ttl_s)


async def _rebuild(
    conn: Any,
    publisher: PublisherDep,
    settings: GatewaySettings,
    user: Principal,
    record: CharacterRecord,
) -> str:
    try:
        return await characters.start_reference_set(
            conn,
            publisher,
            settings.kafka.topics.requests,
            settings.publish_timeout_s,
            user.user_id,
            user.tier,
            record,
        )
    except (ImagegenError, OSError, TimeoutError) as exc:
        log.warning(
            "event=publish_failed user_id=%s character_id=%s error=%r", user.user_id, record.id, exc
        )
        raise _unavailable(exc) from exc


@router.patch(
    "/{character_id}",
    response_model=Character,
    responses=responses(401, 404, 422, 429, 503),
    summary="Update a character (partial)",
)
async def update_character(
    character_id: CharacterId,
    body: Annotated[
        CharacterUpdate,
        Body(
            openapi_examples={
                "new hair": {"value": {"attributes": {"hairColour": "black"}}},
                "rename": {"value": {"name": "Mia Rose"}},
            }
        ),
    ],
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    moderator: ModeratorDep,
    request: Request,
) -> Character:
    """Only the fields sent change (`attributes` merges key by key; null clears one).
    A changed look makes an existing reference set stale and queues its rebuild."""
    await moderate_character(moderator, body)
    fetched = None
    if body.lora_model_url is not None:
        if not await characters.existing_ids(pool, user.user_id, [character_id]):
            raise not_found("character", character_id)
        fetched = await lora_input.lora_from_url(
            request,
            settings,
            blobs,
            user.user_id,
            character_id,
            body.lora_model_url,
            trigger_word=body.lora_trigger_word or "",
            weight=1.0 if body.lora_weight is None else body.lora_weight,
        )
    async with pool.acquire() as conn, conn.transaction():
        if not await characters.lock(conn, user.user_id, character_id):
            raise not_found("character", character_id)
        before = await characters.get(conn, user.user_id, character_id)
        assert before is not None
        after = characters.apply_update(before, body)
        after = _with_lora(after, body, fetched)
        await characters.save(conn, user.user_id, after)
        look_changed = after.fingerprint != before.fingerprint
        if look_changed and before.reference_status is not ReferenceSetStatus.NONE:
            job_id = await _rebuild(conn, publisher, settings, user, after)
            log.info("event=reference_set_stale character_id=%s job_id=%s", character_id, job_id)
        record = await characters.get(conn, user.user_id, character_id)
    assert record is not None
    return await characters.view(blobs, record, settings.signed_url_ttl_s)


def _with_lora(
    record: CharacterRecord, body: CharacterUpdate, fetched: CharacterLora | None
) -> CharacterRecord:
    """The record with the patch's LoRA fields applied: a new file from `loraModelUrl`,
    `loraModelUrl: null` removes it, a trigger word or weight alone edits the current one."""
    sent = body.model_fields_set
    lora = record.lora
    if fetched is not None:
        lora = fetched
    elif "lora_model_url" in sent:  # sent as null
        lora = None
    elif {"lora_trigger_word", "lora_weight"} & sent:
        if lora is None:
            raise field_error(
                ("body", "loraModelUrl"),
                "the character has no LoRA: give loraModelUrl (or upload it with PUT .../lora)",
            )
        changes: dict[str, object] = {}
        if "lora_trigger_word" in sent:
            changes["trigger_word"] = body.lora_trigger_word or ""
        if "lora_weight" in sent:
            changes["weight"] = 1.0 if body.lora_weight is None else body.lora_weight
        lora = lora.model_copy(update=changes)
    if lora == record.lora:
        return record
    return CharacterRecord(**{**record.__dict__, "lora": lora})


@router.delete(
    "/{character_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 404, 409, 422, 429, 503),
    summary="Delete a character",
)
async def delete_character(
    character_id: CharacterId,
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    publisher: PublisherDep,
    settings: SettingsDep,
) -> Response:
    """Refused (409) while a story casts the character. Its uploaded reference photos are
    deleted; storage then deletes its generated images (portraits, reference set, packs:
    every version and rendition) and confirms each with image_deleted. Story scenes stay
    with their story."""
    async with pool.acquire() as conn, conn.transaction():
        if not await characters.lock(conn, user.user_id, character_id):
            raise not_found("character", character_id)
        cast_in = await characters.stories_casting(conn, user.user_id, character_id)
        if cast_in:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"character {character_id} is in stories {', '.join(cast_in)}:"
                " remove it from their characterIds first",
            )
        keys = await characters.delete(conn, user.user_id, character_id)
        command = DeleteCharacter(character_id=character_id, user_id=user.user_id)
        await publishing.send(publisher, settings, user.user_id, command)
    if keys:
        try:
            await blobs.delete(keys)
        except ImagegenError as exc:
            # The rows are gone; leftover objects are unreachable, not inconsistent.
            log.warning("event=orphan_reference_objects count=%d error=%r", len(keys), exc)
    log.info("event=character_deleted user_id=%s character_id=%s", user.user_id, character_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{character_id}/reference-set",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ReferenceSetAccepted,
    dependencies=[IdempotencyKey, GenerateLimit],
    responses=responses(401, 404, 409, 422, 429, 503),
    summary="Build (or rebuild) the character's reference set",
)
async def build_reference_set(
    character_id: CharacterId,
    user: CurrentUser,
    pool: PoolDep,
    publisher: PublisherDep,
    settings: SettingsDep,
) -> ReferenceSetAccepted:
    """Queues a `reference` job (front, side and three expressions) for the current look.
    Refused (409) while one is already building for this look."""
    async with pool.acquire() as conn, conn.transaction():
        if not await characters.lock(conn, user.user_id, character_id):
            raise not_found("character", character_id)
        record = await characters.get(conn, user.user_id, character_id)
        assert record is not None
        if record.reference_status is ReferenceSetStatus.BUILDING:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"the reference set is already building (job {record.reference_job_id})",
            )
        job_id = await _rebuild(conn, publisher, settings, user, record)
        record = await characters.get(conn, user.user_id, character_id)
    assert record is not None
    return ReferenceSetAccepted(
        job_id=job_id,
        status=JobStatus.QUEUED,
        reference_set=characters.reference_set_view(record),
    )
