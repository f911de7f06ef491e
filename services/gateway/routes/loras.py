"""`/api/v1/characters/{characterId}/lora`: a character's LoRA weights (safetensors).

Upload the file here (multipart), or give `loraModelUrl` when creating or updating the
character (fetched once, see services.gateway.loras). Setting or removing a LoRA changes
the character's look: an existing reference set goes stale, as with any look change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from imagegen.errors import ImagegenError
from schemas.characters import CharacterLora
from services.gateway import characters, loras
from services.gateway.auth import CurrentUser
from services.gateway.deps import BlobsDep, PoolDep, SettingsDep
from services.gateway.models import Character
from services.gateway.problems import not_found, responses
from services.gateway.routes.characters import CharacterId
from services.gateway.routes.lora_input import refusal, storage_unavailable

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/characters", tags=["characters"])

_FILE_DOC = "LoRA weights as one safetensors file (diffusers or kohya layout)."


@router.put(
    "/{character_id}/lora",
    response_model=Character,
    responses=responses(401, 404, 413, 422, 429, 503),
    summary="Upload the character's LoRA weights",
)
async def upload_lora(
    character_id: CharacterId,
    file: Annotated[UploadFile, File(description=_FILE_DOC)],
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    trigger_word: Annotated[str | None, Form(alias="triggerWord", max_length=100)] = None,
    trigger_word_snake: Annotated[str | None, Form(alias="trigger_word", max_length=100)] = None,
    weight: Annotated[float, Form(ge=0.0, le=2.0)] = 1.0,
) -> Character:
    """Replaces any LoRA the character had; the file is checked before anything changes."""
    if not await characters.existing_ids(pool, user.user_id, [character_id]):
        raise not_found("character", character_id)
    data = await file.read(settings.lora_max_bytes + 1)
    try:
        sha256 = await asyncio.to_thread(loras.check_lora, data, settings.lora_max_bytes)
    except loras.LoraRefusedError as exc:
        raise refusal(exc, "file") from exc
    try:
        lora = await loras.store(
            blobs,
            user.user_id,
            character_id,
            data,
            sha256,
            trigger_word=trigger_word or trigger_word_snake or "",
            weight=weight,
        )
    except ImagegenError as exc:
        raise storage_unavailable(exc) from exc
    record = await _set(pool, user.user_id, character_id, lora)
    log.info("event=lora_set character_id=%s sha256=%s size=%d", character_id, sha256, len(data))
    return await characters.view(blobs, record, settings.signed_url_ttl_s)


@router.delete(
    "/{character_id}/lora",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 404, 422, 429),
    summary="Remove the character's LoRA",
)
async def delete_lora(character_id: CharacterId, user: CurrentUser, pool: PoolDep) -> Response:
    """The character is drawn without a LoRA from its next job on (the file stays for
    jobs already queued with it)."""
    await _set(pool, user.user_id, character_id, None)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _set(
    pool: Any, user_id: str, character_id: str, lora: CharacterLora | None
) -> characters.CharacterRecord:
    async with pool.acquire() as conn, conn.transaction():
        if not await characters.lock(conn, user_id, character_id):
            raise not_found("character", character_id)
        record = await characters.get(conn, user_id, character_id)
        assert record is not None
        updated = characters.CharacterRecord(**{**record.__dict__, "lora": lora})
        await characters.save(conn, user_id, updated)
        after = await characters.get(conn, user_id, character_id)
    assert after is not None
    return after
