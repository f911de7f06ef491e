"""`/api/v1/characters`: create, read and list the caller's own characters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from services.gateway import characters
from services.gateway.auth import CurrentUser
from services.gateway.deps import PoolDep
from services.gateway.models import Character, CharacterCreate, CharacterList

router = APIRouter(prefix="/api/v1/characters", tags=["characters"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Character)
async def create_character(body: CharacterCreate, user: CurrentUser, pool: PoolDep) -> Character:
    return await characters.create(pool, user.user_id, body)


@router.get("", response_model=CharacterList)
async def list_characters(
    user: CurrentUser, pool: PoolDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> CharacterList:
    return CharacterList(items=await characters.list_for(pool, user.user_id, limit))


@router.get("/{character_id}", response_model=Character)
async def get_character(character_id: str, user: CurrentUser, pool: PoolDep) -> Character:
    character = await characters.get(pool, user.user_id, character_id)
    if character is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"character {character_id} not found")
    return character
