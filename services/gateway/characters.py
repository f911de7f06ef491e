"""Characters: each user's own, with a locked seed that makes every image of them consistent.

`get` returns a `CharacterRecord` (the row, its uploaded photos and, when its reference set
is ready for the current look, the generated reference keys); `to_spec` turns it into the
`CharacterSpec` contract that travels with every request; `spec_for` does both.

Deleting a character is refused (409) while a story casts it, so stories never point at
nothing; running jobs are not a reason to refuse, because each carries its own snapshot
of the character. Its uploaded photos are deleted with it; its generated images stay.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.kafka import Publisher
from schemas.characters import MAX_SEED, Audience, CharacterLora, CharacterSpec
from schemas.events import JobStatus
from schemas.requests import GenerateImages, JobKind, UserTier
from services.gateway.models import (
    Attributes,
    Character,
    CharacterCreate,
    CharacterLoraView,
    CharacterUpdate,
    ReferencePhoto,
    ReferenceSet,
    ReferenceSetStatus,
)

LORA_FIELDS = frozenset({"lora_model_url", "lora_trigger_word", "lora_weight"})
"""Request fields about the LoRA: the routes turn them into `CharacterRecord.lora`."""
REFERENCE_SET_SIZE = 5
"""Front, side and three expressions (DECISIONS #8)."""
MAX_REFERENCE_KEYS = 8
"""CharacterSpec carries at most 8 keys: uploaded photos first (the real identity)."""

_RENDITION_ORDER = ("display", "original", "print")
_COLUMNS = (
    "c.id, c.name, c.description, c.attributes, c.style_modifiers, c.art_style, c.seed,"
    " c.created_at, c.updated_at, c.reference_job_id, c.reference_fingerprint, c.lora,"
    " c.audience,"
    " j.status AS reference_job_status"
)
_FROM = "FROM characters c LEFT JOIN jobs j ON j.id = c.reference_job_id"
# A character's photos and its generated reference set's renditions, in the same statement
# as the character (one round trip): JSON arrays, NULL when empty. A portrait's job builds
# the set too: only its reference images are the set, and only once the job succeeded.
_DETAILS = (
    ", (SELECT json_agg(json_build_object('id', p.id, 'key', p.key, 'content_type',"
    " p.content_type, 'size_bytes', p.size_bytes, 'width', p.width, 'height', p.height,"
    " 'faces', p.faces, 'created_at', p.created_at) ORDER BY p.created_at, p.id)"
    " FROM reference_photos p WHERE p.character_id = c.id) AS photos,"
    " (SELECT json_agg(i.renditions ORDER BY i.index) FROM images i"
    " JOIN jobs rj ON rj.id = i.job_id WHERE i.job_id = c.reference_job_id"
    f" AND j.status IN ('{JobStatus.COMPLETED.value}', '{JobStatus.PARTIALLY_COMPLETED.value}')"
    " AND (rj.kind = 'reference' OR i.kind = 'reference')) AS generated"
)

Db: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


@dataclass(frozen=True)
class PhotoRecord:
    id: str
    key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    faces: int | None
    created_at: datetime


@dataclass(frozen=True)
class CharacterRecord:
    """A character as stored, with what its spec and its API view need."""

    id: str
    name: str
    description: str
    attributes: Attributes
    style_modifiers: list[str]
    art_style: str
    seed: int
    created_at: datetime
    updated_at: datetime
    reference_job_id: str | None = None
    reference_fingerprint: str | None = None
    reference_job_status: JobStatus | None = None
    photos: list[PhotoRecord] = field(default_factory=list)
    generated_keys: list[str] = field(default_factory=list)
    lora: CharacterLora | None = None
    audience: Audience = "general"

    @property
    def fingerprint(self) -> str:
        return to_spec(self, with_keys=False).appearance_fingerprint()

    @property
    def reference_status(self) -> ReferenceSetStatus:
        if self.reference_job_id is None:
            return ReferenceSetStatus.NONE
        if self.reference_fingerprint != self.fingerprint:
            return ReferenceSetStatus.STALE
        status = self.reference_job_status
        if status is None or not status.terminal:
            return ReferenceSetStatus.BUILDING
        if self.generated_keys:
            return ReferenceSetStatus.READY
        return ReferenceSetStatus.STALE  # the build failed or was cancelled


def to_spec(character: CharacterRecord, *, with_keys: bool = True) -> CharacterSpec:
    """The snapshot that travels with a request: generation never looks a character up.

    reference_keys: uploaded photo keys (oldest first), then the generated reference set's
    keys when it is ready for the current look; at most 8.
    """
    keys: list[str] = []
    if with_keys:
        keys = [p.key for p in character.photos]
        if character.reference_status is ReferenceSetStatus.READY:
            keys += character.generated_keys
    return CharacterSpec(
        id=character.id,
        name=character.name,
        description=character.description,
        attributes=character.attributes,
        style_modifiers=character.style_modifiers,
        art_style=character.art_style,
        seed=character.seed,
        reference_keys=keys[:MAX_REFERENCE_KEYS],
        lora=character.lora,
        audience=character.audience,
    )


async def spec_for(db: Db, user_id: str, character_id: str) -> CharacterSpec | None:
    """The user's character as the CharacterSpec contract, or None (also someone else's)."""
    record = await get(db, user_id, character_id)
    return to_spec(record) if record is not None else None


def _record(row: asyncpg.Record) -> CharacterRecord:
    status = row["reference_job_status"]
    return CharacterRecord(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        attributes=Attributes.model_validate_json(row["attributes"]),
        style_modifiers=json.loads(row["style_modifiers"]),
        art_style=row["art_style"],
        seed=row["seed"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        reference_job_id=row["reference_job_id"],
        reference_fingerprint=row["reference_fingerprint"],
        reference_job_status=JobStatus(status) if status is not None else None,
        lora=CharacterLora.model_validate_json(row["lora"]) if row["lora"] else None,
        audience=row["audience"],
        photos=_photos(row.get("photos")),
        generated_keys=_generated(row.get("generated")),
    )


def _photos(column: str | None) -> list[PhotoRecord]:
    photos = json.loads(column) if column is not None else []
    return [
        PhotoRecord(**{**photo, "created_at": datetime.fromisoformat(photo["created_at"])})
        for photo in photos
    ]


def _generated(column: str | None) -> list[str]:
    renditions = json.loads(column) if column is not None else []
    return [key for r in renditions if (key := _rendition_key(r)) is not None]


def _rendition_key(renditions: dict[str, dict[str, object]]) -> str | None:
    for name in _RENDITION_ORDER:
        key = renditions.get(name, {}).get("key")
        if isinstance(key, str):
            return key
    return None


async def note_reference_build(
    conn: asyncpg.Connection, record: CharacterRecord, job_id: str
) -> bool:
    """A portrait job builds the reference set when none is ready or building for the
    character's look (the scheduler plans it so): record that job as the set's builder, so
    the set's status follows it. Whether it does."""
    if record.reference_status not in (ReferenceSetStatus.NONE, ReferenceSetStatus.STALE):
        return False
    await conn.execute(
        "UPDATE characters SET reference_job_id = $2, reference_fingerprint = $3 WHERE id = $1",
        record.id,
        job_id,
        record.fingerprint,
    )
    return True


async def get(db: Db, user_id: str, character_id: str) -> CharacterRecord | None:
    """The user's character, or None (also when it belongs to someone else)."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS}{_DETAILS} {_FROM} WHERE c.id = $1 AND c.user_id = $2",
        character_id,
        user_id,
    )
    return _record(row) if row is not None else None


async def get_many(db: Db, user_id: str, ids: list[str]) -> dict[str, CharacterRecord]:
    """The user's characters among `ids` (others' and unknown ids are simply absent)."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS}{_DETAILS} {_FROM} WHERE c.id = ANY($1::text[]) AND c.user_id = $2",
        ids,
        user_id,
    )
    return {row["id"]: _record(row) for row in rows}


async def existing_ids(db: Db, user_id: str, ids: list[str]) -> set[str]:
    """Which of `ids` are the user's characters."""
    rows = await db.fetch(
        "SELECT id FROM characters WHERE id = ANY($1::text[]) AND user_id = $2", ids, user_id
    )
    return {row["id"] for row in rows}


async def list_for(
    db: Db, user_id: str, limit: int, after: tuple[datetime, str] | None = None
) -> list[CharacterRecord]:
    """Newest first; `after` is the (created_at, id) of the previous page's last row."""
    if after is None:
        rows = await db.fetch(
            f"SELECT {_COLUMNS}{_DETAILS} {_FROM} WHERE c.user_id = $1"
            " ORDER BY c.created_at DESC, c.id DESC LIMIT $2",
            user_id,
            limit,
        )
    else:
        rows = await db.fetch(
            f"SELECT {_COLUMNS}{_DETAILS} {_FROM} WHERE c.user_id = $1"
            " AND (c.created_at, c.id) < ($3, $4)"
            " ORDER BY c.created_at DESC, c.id DESC LIMIT $2",
            user_id,
            limit,
            *after,
        )
    return [_record(row) for row in rows]


async def create(
    db: Db,
    user_id: str,
    body: CharacterCreate,
    character_id: str | None = None,
    lora: CharacterLora | None = None,
) -> CharacterRecord:
    """Insert the character; `character_id` is the id an Idempotency-Key's claim keeps for
    its request (idempotent_jobs.py), else a fresh one. `lora`: its checked, stored LoRA."""
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    row = await db.fetchrow(
        "WITH c AS (INSERT INTO characters (id, user_id, name, description, attributes,"
        " style_modifiers, art_style, seed, lora, audience)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9::jsonb, $10)"
        " RETURNING *), j AS (SELECT NULL::text AS status)"
        f" SELECT {_COLUMNS} FROM c, j",
        character_id or str(uuid.uuid4()),
        user_id,
        body.name,
        body.description,
        body.attributes.model_dump_json(),
        json.dumps(body.style_modifiers),
        body.art_style,
        seed,
        lora.model_dump_json() if lora is not None else None,
        body.audience,
    )
    assert row is not None
    return _record(row)


def apply_update(record: CharacterRecord, patch: CharacterUpdate) -> CharacterRecord:
    """The record as the patch would leave it (not saved); validation errors name fields."""
    changes = patch.model_dump(exclude_unset=True, exclude=set(LORA_FIELDS))
    attributes = record.attributes
    if patch.attributes is not None:
        merged = attributes.model_dump()
        for name, value in patch.attributes.model_dump(exclude_unset=True).items():
            merged[name] = [] if value is None and name.endswith(("features", "traits")) else value
        attributes = Attributes.model_validate(merged)
    fields = {**record.__dict__, **changes, "attributes": attributes}
    return CharacterRecord(**fields)


async def save(conn: asyncpg.Connection, user_id: str, record: CharacterRecord) -> None:
    """Write the editable fields back (updated_at moves)."""
    await conn.execute(
        "UPDATE characters SET name = $3, description = $4, attributes = $5::jsonb,"
        " style_modifiers = $6::jsonb, art_style = $7, seed = $8, lora = $9::jsonb,"
        " audience = $10, updated_at = now()"
        " WHERE id = $1 AND user_id = $2",
        record.id,
        user_id,
        record.name,
        record.description,
        record.attributes.model_dump_json(),
        json.dumps(record.style_modifiers),
        record.art_style,
        record.seed,
        record.lora.model_dump_json() if record.lora is not None else None,
        record.audience,
    )


async def lock(conn: asyncpg.Connection, user_id: str, character_id: str) -> bool:
    """Lock the character's row for this transaction; False when the user has no such one."""
    found = await conn.fetchval(
        "SELECT 1 FROM characters WHERE id = $1 AND user_id = $2 FOR UPDATE",
        character_id,
        user_id,
    )
    return found is not None


async def start_reference_set(
    conn: asyncpg.Connection,
    publisher: Publisher,
    topic: str,
    timeout_s: float,
    user_id: str,
    tier: UserTier,
    record: CharacterRecord,
) -> str:
    """Record and publish a GenerateImages(kind=reference) job for the record's current look.

    Call inside the transaction that saved the record: if publishing fails, the caller's
    rollback leaves no job row and no changed character (the exception propagates).
    """
    job_id = str(uuid.uuid4())
    spec = to_spec(record)
    await conn.execute(
        "INSERT INTO jobs (id, user_id, kind, status, character_id, total, audience)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        job_id,
        user_id,
        JobKind.REFERENCE.value,
        JobStatus.QUEUED.value,
        record.id,
        REFERENCE_SET_SIZE,
        record.audience,
    )
    await conn.execute(
        "UPDATE characters SET reference_job_id = $2, reference_fingerprint = $3 WHERE id = $1",
        record.id,
        job_id,
        spec.appearance_fingerprint(),
    )
    command = GenerateImages(
        job_id=job_id,
        user_id=user_id,
        tier=tier,
        kind=JobKind.REFERENCE,
        character=spec,
        image_count=REFERENCE_SET_SIZE,
        style=record.art_style,
    )
    await asyncio.wait_for(publisher.publish(topic, user_id, command), timeout_s)
    return job_id


async def stories_casting(db: Db, user_id: str, character_id: str) -> list[str]:
    """Ids of the user's stories whose cast includes the character."""
    rows = await db.fetch(
        "SELECT id FROM stories WHERE user_id = $1 AND character_ids ? $2 ORDER BY id",
        user_id,
        character_id,
    )
    return [row["id"] for row in rows]


async def delete(conn: asyncpg.Connection, user_id: str, character_id: str) -> list[str]:
    """Delete the row (photos' rows cascade); returns the photo keys to remove from S3."""
    keys = await conn.fetch(
        "SELECT key FROM reference_photos WHERE character_id = $1 AND user_id = $2",
        character_id,
        user_id,
    )
    await conn.execute(
        "DELETE FROM characters WHERE id = $1 AND user_id = $2", character_id, user_id
    )
    return [row["key"] for row in keys]


async def photo_view(blobs: BlobStore, photo: PhotoRecord, url_ttl: int) -> ReferencePhoto:
    return ReferencePhoto(
        id=photo.id,
        content_type=photo.content_type,
        size_bytes=photo.size_bytes,
        width=photo.width,
        height=photo.height,
        faces=photo.faces,
        url=await blobs.presign_get(photo.key, url_ttl),
        created_at=photo.created_at,
    )


def reference_set_view(record: CharacterRecord) -> ReferenceSet:
    status = record.reference_status
    return ReferenceSet(
        status=status,
        job_id=record.reference_job_id,
        fingerprint=record.reference_fingerprint,
        image_count=len(record.generated_keys) if status is ReferenceSetStatus.READY else 0,
    )


async def view(blobs: BlobStore, record: CharacterRecord, url_ttl: int) -> Character:
    """The API's view of a character (signed photo URLs)."""
    return Character(
        id=record.id,
        name=record.name,
        description=record.description,
        attributes=record.attributes,
        style_modifiers=record.style_modifiers,
        art_style=record.art_style,
        seed=record.seed,
        reference_set=reference_set_view(record),
        lora=lora_view(record.lora),
        audience=record.audience,
        reference_photos=[await photo_view(blobs, p, url_ttl) for p in record.photos],
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def lora_view(lora: CharacterLora | None) -> CharacterLoraView | None:
    if lora is None:
        return None
    return CharacterLoraView(
        trigger_word=lora.trigger_word,
        weight=lora.weight,
        sha256=lora.sha256,
        size_bytes=lora.size,
        source_url=lora.source_url,
    )
