"""Metadata rows of a stored image: the `images` row and, for reference images and
portraits, the `character_references` row with the face embedding.

A delivery whose renditions all sit at their final keys (postprocess wrote them there)
costs one round trip: `admit_and_insert` reads whether the image may be stored and what was
stored already, and writes every row only when it may, in one statement (one implicit
transaction). One with staged renditions costs two: `admission` first (the copies to the
final keys must not run for an image that may not be stored, nor overwrite one stored
already), then `insert_image`."""

from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg

from schemas.events import ImageStoredData, StoredRendition
from schemas.images import ProcessedImage
from schemas.requests import JobKind

_ADMISSION_FLAGS = frozenset({"deleted_image", "deleted_owner", "discarded", "inserted"})
REFERENCE_KINDS = frozenset({JobKind.REFERENCE, JobKind.PORTRAIT})
"""Images that show what a character looks like: its reference set and its portraits."""

_IMAGE_COLUMNS = (
    "images (image_id, version, job_id, image_index, user_id, character_id,"
    " kind, width, height, size_bytes, renditions, generation, provider, cost_usd,"
    " consistency_score, flagged, story_id, page_number, style, prompt, negative_prompt,"
    " model, backend, seed, quality, conditioning, scene_description, scene_source,"
    " parent_version, timings, quality_score, quality_components, character_scores,"
    " not_scored_reason)"
)
_IMAGE_VALUES = ",".join(f"${n}" for n in range(1, 35))
_ON_CONFLICT = " ON CONFLICT (image_id, version) DO NOTHING RETURNING true"
_INSERT_IMAGE = "INSERT INTO " + _IMAGE_COLUMNS + " VALUES (" + _IMAGE_VALUES + ")" + _ON_CONFLICT

# The reference row is written only when the image row was ($35: whether the kind has one).
_INSERT_REFERENCE = (
    " reference AS (INSERT INTO character_references (image_id, version, user_id,"
    " character_id, job_id, kind, original_key, keys, style, embedding, encoder)"
    " SELECT $1, $2, $5, $6, $3, $7, $36::text, $37::jsonb, $19, $38::double precision[],"
    " $39::text FROM inserted WHERE $35::boolean"
    " ON CONFLICT (image_id, version) DO NOTHING)"
)

# One statement, so atomic without BEGIN/COMMIT.
_INSERT_ROWS = (
    "WITH inserted AS ("
    + _INSERT_IMAGE
    + "),"
    + _INSERT_REFERENCE
    + " SELECT EXISTS (SELECT 1 FROM inserted)"
)


_STORED = (
    "SELECT image_id, image_index, character_id, kind, version, size_bytes, width, height,"
    " renditions, seed, model, backend, provider, (generation->>'demo')::boolean AS demo,"
    " cost_usd, consistency_score, quality_score, flagged, story_id, page_number, style,"
    " prompt, negative_prompt, scene_description, scene_source, character_scores,"
    " not_scored_reason FROM images WHERE image_id = $1 AND version = $2"
)


# Why an image must not be stored (it, or its owner, was deleted; or the scheduler ended
# this version unstored and it is not stored yet), beside what was stored: one round trip.
_ADMISSION = (
    "SELECT EXISTS (SELECT 1 FROM deleted_images WHERE image_id = $1) AS deleted_image,"
    " EXISTS (SELECT 1 FROM deleted_owners WHERE user_id = $3"
    "   AND owner_kind = $4 AND owner_id = $5) AS deleted_owner,"
    " EXISTS (SELECT 1 FROM discarded_images d WHERE d.image_id = $1"
    "   AND d.version = $2) AS discarded,"
    " s.* FROM (SELECT 1) AS one LEFT JOIN (" + _STORED + ") AS s ON true"
)


# Admission and insert in one statement: the rows are written only when no admission flag
# is set (a discarded version stored already conflicts anyway). Every part of a statement
# reads one snapshot, so `s` is what was stored before it. $40, $41: the owner's kind, id.
_ADMIT_AND_INSERT = (
    "WITH flags AS (SELECT"
    " EXISTS (SELECT 1 FROM deleted_images WHERE image_id = $1) AS deleted_image,"
    " EXISTS (SELECT 1 FROM deleted_owners WHERE user_id = $5"
    "   AND owner_kind = $40 AND owner_id = $41) AS deleted_owner,"
    " EXISTS (SELECT 1 FROM discarded_images d WHERE d.image_id = $1"
    "   AND d.version = $2) AS discarded),"
    " inserted AS (INSERT INTO " + _IMAGE_COLUMNS + " SELECT " + _IMAGE_VALUES + " FROM flags"
    " WHERE NOT (deleted_image OR deleted_owner OR discarded)"
    + _ON_CONFLICT
    + "),"
    + _INSERT_REFERENCE
    + " SELECT flags.*, EXISTS (SELECT 1 FROM inserted) AS inserted, s.*"
    " FROM flags LEFT JOIN (" + _STORED + ") AS s ON true"
)


@dataclass(frozen=True)
class Admission:
    """What storage knows of an image version before storing it."""

    deleted: str | None
    """"image", the owner's kind, "discarded" (ended unstored, not stored), or None."""
    stored: ImageStoredData | None
    """What was stored already (see `stored_image`)."""
    inserted: bool = False
    """Whether this statement wrote the rows (`admit_and_insert` only)."""


async def admission(
    conn: asyncpg.Connection,
    image_id: str,
    version: int,
    user_id: str,
    owner_kind: str,
    owner_id: str,
) -> Admission:
    """Whether the image may be stored, and what was stored of it, in one read."""
    row = await conn.fetchrow(_ADMISSION, image_id, version, user_id, owner_kind, owner_id)
    assert row is not None
    return _verdict(row, owner_kind, inserted=False)


async def admit_and_insert(
    conn: asyncpg.Connection,
    msg: ProcessedImage,
    stored: list[StoredRendition],
    owner_kind: str,
    owner_id: str,
) -> Admission:
    """`admission`, and the rows inserted when it admits the image, in one statement.
    Only for an image whose renditions are at their final keys already."""
    row = await conn.fetchrow(_ADMIT_AND_INSERT, *_insert_args(msg, stored), owner_kind, owner_id)
    assert row is not None
    return _verdict(row, owner_kind, inserted=row["inserted"])


def _verdict(row: asyncpg.Record, owner_kind: str, *, inserted: bool) -> Admission:
    stored = _stored_data(row) if row["image_id"] is not None else None
    if row["deleted_image"]:
        return Admission("image", stored)
    if row["deleted_owner"]:
        return Admission(owner_kind, stored)
    deleted = "discarded" if row["discarded"] and stored is None else None
    return Admission(deleted, stored, inserted)


async def stored_image(
    conn: asyncpg.Connection, image_id: str, version: int
) -> ImageStoredData | None:
    """What was stored for this image version, as its `image_stored` event says it; None if
    nothing was. A redelivered copy of the image (a re-run generation: other bytes, other
    cost) is answered with this, never with the copy's own data."""
    row = await conn.fetchrow(_STORED, image_id, version)
    return None if row is None else _stored_data(row)


def _stored_data(row: asyncpg.Record) -> ImageStoredData:
    fields = {k: v for k, v in row.items() if k not in _ADMISSION_FLAGS}
    fields["renditions"] = json.loads(fields["renditions"])
    fields["character_scores"] = json.loads(fields["character_scores"])
    fields["cost_usd"] = float(fields["cost_usd"])
    fields["demo"] = bool(fields["demo"])
    return ImageStoredData.model_validate(fields)


async def insert_image(
    conn: asyncpg.Connection, msg: ProcessedImage, stored: list[StoredRendition]
) -> bool:
    """Insert the image's rows (one statement); False when they were already there."""
    return bool(await conn.fetchval(_INSERT_ROWS, *_insert_args(msg, stored)))


def _insert_args(msg: ProcessedImage, stored: list[StoredRendition]) -> tuple[object, ...]:
    """$1-$39 of the insert statements."""
    image, record = msg.image, msg.record
    original = next(s for s in stored if s.name == "original")
    return (
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
        image.kind in REFERENCE_KINDS,
        original.key,
        json.dumps({s.name: s.key for s in stored}),
        msg.face_embedding,
        msg.face_encoder if msg.face_embedding is not None else "",
    )
