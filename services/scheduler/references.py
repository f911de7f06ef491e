"""Built reference sets (front, side, expressions) by character appearance, per user.

A portrait request plans a reference set only when none is built for the character's
`appearance_fingerprint()`; one is recorded when every reference image of a job for that
character is stored (DECISIONS.md #8).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from schemas.characters import CharacterSpec
from schemas.requests import JobKind
from services.scheduler.dispatch import best_key


async def load_reference_sets(
    conn: asyncpg.Connection, user_id: str, characters: Sequence[CharacterSpec]
) -> dict[str, list[str]]:
    """Stored keys of the built reference sets of `characters`, by appearance fingerprint."""
    prints = [c.appearance_fingerprint() for c in characters]
    if not prints:
        return {}
    rows = await conn.fetch(
        "SELECT fingerprint, keys FROM reference_sets WHERE user_id = $1 AND fingerprint = ANY($2)",
        user_id,
        prints,
    )
    return {r["fingerprint"]: list(r["keys"]) for r in rows}


async def record_reference_set(
    conn: asyncpg.Connection, job_id: str, character: CharacterSpec
) -> bool:
    """Record the job's reference set of `character` if all of it is stored now."""
    rows = await conn.fetch(
        "SELECT i.status, i.stored_keys, j.user_id FROM job_images i JOIN jobs j USING (job_id)"
        " WHERE i.job_id = $1 AND i.message->'image'->>'kind' = $2"
        " AND i.message->'image'->>'character_id' = $3 ORDER BY i.image_index",
        job_id,
        JobKind.REFERENCE.value,
        character.id,
    )
    if not rows or any(r["status"] != "stored" for r in rows):
        return False
    keys = [k for r in rows if (k := best_key(json.loads(r["stored_keys"])))]
    await conn.execute(
        "INSERT INTO reference_sets (user_id, fingerprint, character_id, keys, job_id)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, fingerprint)"
        " DO UPDATE SET keys = EXCLUDED.keys, job_id = EXCLUDED.job_id, created_at = now()",
        rows[0]["user_id"],
        character.appearance_fingerprint(),
        character.id,
        keys,
        job_id,
    )
    return True
