"""Turning a request's LoRA input into a stored `CharacterLora`, or a 4xx naming the field."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, status

from imagegen.errors import ImagegenError
from schemas.characters import CharacterLora
from services.gateway import loras
from services.gateway.problems import field_error
from services.gateway.settings import GatewaySettings


def refusal(exc: loras.LoraRefusedError, *loc: str) -> HTTPException:
    return field_error(("body", *loc), exc.msg, status_code=exc.status_code)


def storage_unavailable(exc: BaseException) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "object storage is unavailable; nothing was changed, please retry",
        headers={"Retry-After": "5"},
    )


async def lora_from_url(
    request: Request,
    settings: GatewaySettings,
    blobs: Any,
    user_id: str,
    character_id: str,
    url: str,
    *,
    trigger_word: str,
    weight: float,
) -> CharacterLora:
    """The body's `loraModelUrl` fetched, checked and stored; 4xx naming the field if not."""
    try:
        return await loras.from_url(
            blobs,
            user_id,
            character_id,
            url,
            trigger_word=trigger_word,
            weight=weight,
            max_bytes=settings.lora_max_bytes,
            timeout_s=settings.lora_fetch_timeout_s,
            refuse_internal=settings.env == "prod",
            transport=getattr(request.app.state, "lora_transport", None),
        )
    except loras.LoraRefusedError as exc:
        raise refusal(exc, "loraModelUrl") from exc
    except ImagegenError as exc:
        raise storage_unavailable(exc) from exc
