"""Characters: each user's own, with a locked seed that makes every image of them consistent."""

from __future__ import annotations

import json
import secrets
import uuid

import asyncpg

from schemas.characters import MAX_SEED, CharacterSpec
from services.gateway.models import Attributes, Character, CharacterCreate

_COLUMNS = "id, name, description, attributes, style_modifiers, art_style, seed, created_at"


def _character(row: asyncpg.Record) -> Character:
    return Character(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        attributes=Attributes.model_validate_json(row["attributes"]),
        style_modifiers=json.loads(row["style_modifiers"]),
        art_style=row["art_style"],
        seed=row["seed"],
        created_at=row["created_at"],
    )


def to_spec(character: Character) -> CharacterSpec:
    """The snapshot that travels with a request: generation never looks a character up."""
    return CharacterSpec(
        id=character.id,
        name=character.name,
        description=character.description,
        attributes=character.attributes,
        style_modifiers=character.style_modifiers,
        art_style=character.art_style,
        seed=character.seed,
    )


async def create(
    db: asyncpg.Pool | asyncpg.Connection, user_id: str, body: CharacterCreate
) -> Character:
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    row = await db.fetchrow(
        "INSERT INTO characters (id, user_id, name, description, attributes, style_modifiers,"
        " art_style, seed) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8)"
        f" RETURNING {_COLUMNS}",
        str(uuid.uuid4()),
        user_id,
        body.name,
        body.description,
        body.attributes.model_dump_json(),
        json.dumps(body.style_modifiers),
        body.art_style,
        seed,
    )
    assert row is not None
    return _character(row)


async def get(
    db: asyncpg.Pool | asyncpg.Connection, user_id: str, character_id: str
) -> Character | None:
    """The user's character, or None (also when it belongs to someone else)."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM characters WHERE id = $1 AND user_id = $2",
        character_id,
        user_id,
    )
    return _character(row) if row is not None else None


async def list_for(db: asyncpg.Pool, user_id: str, limit: int) -> list[Character]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM characters WHERE user_id = $1"
        " ORDER BY created_at DESC, id LIMIT $2",
        user_id,
        limit,
    )
    return [_character(row) for row in rows]
