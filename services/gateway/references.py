"""Reference photos of a real person, uploaded for a character as identity references.

Each photo is checked before anything is written: type sniffed from the bytes (JPEG, PNG
or WebP, whatever the client claims), size, pixel count read from the header before any
decoding (decompression bombs never get decoded), a full decode, and at least one face
when a face detector is available (the face cascade postprocess uses, imagegen/faces.py,
if dlib and its models are installed).

Bytes go to S3 under `references/{user}/{character}/{sha256}.{ext}`, a gateway-owned
prefix. The objects are written inside the transaction that inserts their rows, under a
lock on the character; if anything fails the objects written so far are deleted again,
so rows and objects never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import uuid
import warnings
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import asyncpg
from PIL import Image, UnidentifiedImageError

from imagegen.blobstore import BlobStore
from imagegen.faces import FaceCascade, load_cascade
from imagegen.safety import SafetyCheck
from schemas.events import ErrorType
from services.gateway.characters import PhotoRecord

log = logging.getLogger(__name__)

FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}
PREFIX = "references/"
_DETECT_SIDE = 800


class PhotoRefusedError(Exception):
    """One photo is unusable; `index` says which, `status_code` how to answer."""

    def __init__(self, index: int | None, msg: str, status_code: int = 422) -> None:
        super().__init__(msg)
        self.index = index
        self.msg = msg
        self.status_code = status_code


class FaceDetector(Protocol):
    """Counts faces in a picture."""

    def count(self, image: Image.Image) -> int:
        """How many faces the image shows."""
        ...


class CascadeFaceDetector:
    """The face cascade postprocess scores with (imagegen/faces.py: HOG, then dlib's CNN,
    then upsampled HOG), on the photo shrunk to at most `_DETECT_SIDE` px: a photo is
    refused for "no face" only where the scorer would find none either."""

    def __init__(self, cascade: FaceCascade) -> None:
        self.cascade = cascade
        """Shared with the safety check's close-up rule (one set of dlib models loaded)."""

    def count(self, image: Image.Image) -> int:
        small = image.convert("RGB")
        small.thumbnail((_DETECT_SIDE, _DETECT_SIDE))
        return self.cascade.count(small)


def load_face_detector() -> FaceDetector | None:
    """The cascade when dlib and its face models are installed, else None (then no face
    is required)."""
    cascade = load_cascade()
    return CascadeFaceDetector(cascade) if cascade is not None else None


@dataclass(frozen=True)
class CheckedPhoto:
    data: bytes
    sha256: str
    content_type: str
    extension: str
    width: int
    height: int
    faces: int | None


def check_photo(
    data: bytes,
    index: int,
    *,
    max_bytes: int,
    max_pixels: int,
    detector: FaceDetector | None,
    require_face: bool,
    safety: SafetyCheck | None = None,
    audience: str = "general",
) -> CheckedPhoto:
    """Everything about one photo that can be refused; blocking (run it in a thread)."""
    if not data:
        raise PhotoRefusedError(index, "the file is empty")
    if len(data) > max_bytes:
        raise PhotoRefusedError(index, f"larger than {max_bytes} bytes", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                kind = probe.format or ""
                width, height = probe.size
                if kind not in FORMATS:
                    raise PhotoRefusedError(index, "not a JPEG, PNG or WebP image")
                if width * height > max_pixels:
                    raise PhotoRefusedError(
                        index, f"{width}x{height} is more than {max_pixels} pixels"
                    )
                probe.load()
                verdict = safety.check(probe, audience) if safety is not None else None
                faces = detector.count(probe) if detector is not None else None
    except PhotoRefusedError:
        raise
    except UnidentifiedImageError as exc:
        raise PhotoRefusedError(index, "not a JPEG, PNG or WebP image") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise PhotoRefusedError(index, f"not a readable image ({type(exc).__name__})") from exc
    except Image.DecompressionBombError as exc:
        raise PhotoRefusedError(index, "too many pixels") from exc
    if verdict is not None and verdict.refused:
        log.warning(
            "event=reference_photo_refused index=%d score=%.4f threshold=%.2f",
            index,
            verdict.score,
            verdict.threshold,
        )
        raise PhotoRefusedError(index, f"{ErrorType.CONTENT_POLICY_VIOLATION}: {verdict.reason()}")
    if faces == 0 and require_face:
        raise PhotoRefusedError(index, "no face found: upload a photo showing the face clearly")
    content_type, extension = FORMATS[kind]
    return CheckedPhoto(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        faces=faces,
    )


def object_key(user_id: str, character_id: str, photo: CheckedPhoto) -> str:
    user = quote(user_id, safe="")
    return f"{PREFIX}{user}/{character_id}/{photo.sha256}.{photo.extension}"


_PHOTO_COLUMNS = "id, key, content_type, size_bytes, width, height, faces, created_at"


def _photo(row: asyncpg.Record) -> PhotoRecord:
    return PhotoRecord(**{name: row[name] for name in _PHOTO_COLUMNS.split(", ")})


async def add(
    conn: asyncpg.Connection,
    blobs: BlobStore,
    user_id: str,
    character_id: str,
    photos: list[CheckedPhoto],
    max_photos: int,
    written: list[str],
) -> list[PhotoRecord]:
    """Write objects and rows; call inside a transaction holding the character's lock.

    Each object key is appended to `written` once put, for the caller to delete if this or
    the rest of the transaction fails (see `upload`).
    """
    existing = await conn.fetch(
        "SELECT sha256 FROM reference_photos WHERE character_id = $1", character_id
    )
    if len(existing) + len(photos) > max_photos:
        raise PhotoRefusedError(
            None,
            f"a character holds at most {max_photos} reference photos;"
            f" it has {len(existing)} and {len(photos)} were sent",
        )
    seen = {row["sha256"] for row in existing}
    for index, photo in enumerate(photos):
        if photo.sha256 in seen:
            raise PhotoRefusedError(index, "this photo is already uploaded for the character")
        seen.add(photo.sha256)
    records: list[PhotoRecord] = []
    for photo in photos:
        key = object_key(user_id, character_id, photo)
        written.append(key)  # before the put: a put that fails half-way is cleaned too
        await blobs.put(key, photo.data, photo.content_type)
        row = await conn.fetchrow(
            "INSERT INTO reference_photos (id, user_id, character_id, key, sha256, content_type,"
            " size_bytes, width, height, faces) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            f" RETURNING {_PHOTO_COLUMNS}",
            str(uuid.uuid4()),
            user_id,
            character_id,
            key,
            photo.sha256,
            photo.content_type,
            len(photo.data),
            photo.width,
            photo.height,
            photo.faces,
        )
        assert row is not None
        records.append(_photo(row))
    return records


async def discard(blobs: BlobStore, keys: list[str]) -> None:
    """Best-effort removal of objects whose rows do not exist (or no longer do)."""
    if not keys:
        return
    try:
        await asyncio.shield(blobs.delete(keys))
    except Exception as exc:
        log.warning("event=orphan_reference_objects count=%d error=%r", len(keys), exc)


async def upload(
    pool: asyncpg.Pool,
    blobs: BlobStore,
    user_id: str,
    character_id: str,
    photos: list[CheckedPhoto],
    max_photos: int,
) -> list[PhotoRecord] | None:
    """Add the photos all or nothing; None when the user has no such character."""
    written: list[str] = []
    try:
        async with pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "SELECT 1 FROM characters WHERE id = $1 AND user_id = $2 FOR UPDATE",
                character_id,
                user_id,
            )
            if found is None:
                return None
            return await add(conn, blobs, user_id, character_id, photos, max_photos, written)
    except BaseException:
        # Only keys this call wrote, all new (duplicates are refused before any write), so
        # no committed row refers to them.
        with contextlib.suppress(Exception):
            await discard(blobs, written)
        raise


async def list_for(
    db: asyncpg.Pool | asyncpg.Connection, user_id: str, character_id: str
) -> list[PhotoRecord]:
    rows = await db.fetch(
        f"SELECT {_PHOTO_COLUMNS} FROM reference_photos WHERE character_id = $1 AND user_id = $2"
        " ORDER BY created_at, id",
        character_id,
        user_id,
    )
    return [_photo(row) for row in rows]


async def remove(pool: asyncpg.Pool, user_id: str, character_id: str, photo_id: str) -> str | None:
    """Delete the row; returns its object key to delete afterwards (None: no such photo)."""
    key: str | None = await pool.fetchval(
        "DELETE FROM reference_photos WHERE id = $1 AND character_id = $2 AND user_id = $3"
        " RETURNING key",
        photo_id,
        character_id,
        user_id,
    )
    return key
