"""Metadata rows of a stored image: the `images` row and, for reference images and
portraits, the `character_references` row with the face embedding."""

from __future__ import annotations

import json

import asyncpg

from schemas.events import ImageStoredData, StoredRendition
from schemas.images import ProcessedImage
from schemas.requests import JobKind

REFERENCE_KINDS = frozenset({JobKind.REFERENCE, JobKind.PORTRAIT})
"""Images that show what a character looks like: its reference set and its portraits."""

_INSERT_IMAGE = (
    "INSERT INTO images (image_id, version, job_id, image_index, user_id, character_id,"
    " kind, width, height, size_bytes, renditions, generation, provider, cost_usd,"
    " consistency_score, flagged, story_id, page_number, style, prompt, negative_prompt,"
    " model, backend, seed, quality, conditioning, scene_description, scene_source,"
    " parent_version, timings, quality_score, quality_components, character_scores,"
    " not_scored_reason)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,"
    " $23,$24,$25,$26,$27,$28,$29,$30,$31,$32,$33,$34)"
    " ON CONFLICT (image_id, version) DO NOTHING RETURNING true"
)

_INSERT_REFERENCE = (
    "INSERT INTO character_references (image_id, version, user_id, character_id, job_id,"
    " kind, original_key, keys, style, embedding, encoder)"
    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) ON CONFLICT (image_id, version) DO NOTHING"
)


_STORED = (
    "SELECT image_id, image_index, character_id, kind, version, size_bytes, width, height,"
    " renditions, seed, model, backend, provider, (generation->>'demo')::boolean AS demo,"
    " cost_usd, consistency_score, quality_score, flagged, story_id, page_number, style,"
    " prompt, negative_prompt, scene_description, scene_source, character_scores,"
    " not_scored_reason FROM images WHERE image_id = $1 AND version = $2"
)


async def stored_image(
    conn: asyncpg.Connection, image_id: str, version: int
) -> ImageStoredData | None:
    """What was stored for this image version, as its `image_stored` event says it; None if
    nothing was. A redelivered copy of the image (a re-run generation: other bytes, other
    cost) is answered with this, never with the copy's own data."""
    row = await conn.fetchrow(_STORED, image_id, version)
    if row is None:
        return None
    fields = dict(row.items())
    fields["renditions"] = json.loads(fields["renditions"])
    fields["character_scores"] = json.loads(fields["character_scores"])
    fields["cost_usd"] = float(fields["cost_usd"])
    fields["demo"] = bool(fields["demo"])
    return ImageStoredData.model_validate(fields)


async def insert_image(
    conn: asyncpg.Connection, msg: ProcessedImage, stored: list[StoredRendition]
) -> bool:
    """Insert the image's rows in one transaction; False when they were already there."""
    image, record = msg.image, msg.record
    original = next(s for s in stored if s.name == "original")
    async with conn.transaction():
        inserted = await conn.fetchval(
            _INSERT_IMAGE,
            image.image_id,
            image.version,
            image.job_id,
            image.image_index,
            image.user_id,
            image.character_id,
            image.kind.value,
            original.width,
            original.height,
            original.size_bytes,
            json.dumps([s.model_dump() for s in stored]),
            record.model_dump_json(),
            msg.provider,
            msg.cost_usd,
            msg.consistency_score,
            msg.flagged,
            image.story_id,
            image.page_number,
            msg.style,
            record.prompt,
            record.negative_prompt,
            record.model,
            record.backend,
            record.seed,
            record.quality,
            record.conditioning,
            record.scene_description,
            record.scene_source,
            image.version - 1 if image.version > 1 else None,
            msg.timings.model_dump_json(),
            msg.quality_score,
            json.dumps(msg.quality_components),
            json.dumps({cid: s.model_dump() for cid, s in msg.character_scores.items()}),
            msg.not_scored_reason,
        )
        if inserted and image.kind in REFERENCE_KINDS:
            await conn.execute(
                _INSERT_REFERENCE,
                image.image_id,
                image.version,
                image.user_id,
                image.character_id,
                image.job_id,
                image.kind.value,
                original.key,
                json.dumps({s.name: s.key for s in stored}),
                msg.style,
                msg.face_embedding,
                msg.face_encoder if msg.face_embedding is not None else "",
            )
    return bool(inserted)
