"""`/api/v1/characters/{characterId}/reference-photos`: photos of a real person, 1-8 per
character, used as identity references for generation (see services.gateway.references)."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import (
    APIRouter,
    File,
    Form,
    HTTPException,
    Path,
    Request,
    Response,
    UploadFile,
    status,
)

from imagegen.errors import ConfigurationError, ImagegenError
from imagegen.safety import SafetyCheck, SafetyPolicy, load_nsfwjs
from schemas.characters import Audience, strictest
from services.gateway import characters, references
from services.gateway.auth import CurrentUser
from services.gateway.deps import BlobsDep, PoolDep, SettingsDep
from services.gateway.idempotency import IdempotencyKey
from services.gateway.models import ReferencePhotoList
from services.gateway.problems import field_error, not_found, responses
from services.gateway.routes.characters import CharacterId
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/characters", tags=["reference photos"])

PhotoId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")]

_UPLOAD_DOC = (
    "1-8 photos (JPEG, PNG or WebP; at most 10 MB each; at most 8 per character in all),"
    " each showing the person's face when a face detector is available."
)


def face_detector(request: Request) -> references.FaceDetector | None:
    """Loaded once per app, on first use (dlib's import is not free)."""
    state = request.app.state
    if not hasattr(state, "face_detector"):
        state.face_detector = references.load_face_detector()
    detector: references.FaceDetector | None = state.face_detector
    return detector


def safety_check(request: Request, settings: GatewaySettings) -> SafetyCheck | None:
    """The image-safety classifier, loaded once per app on first use; a 503 while it is on
    and its model is missing (uploads are never let through unchecked)."""
    if not settings.safety_check:
        return None
    state = request.app.state
    if getattr(state, "safety_check", None) is None:
        try:
            classifier = load_nsfwjs(settings.safety_model_dir)
        except ConfigurationError as exc:
            log.error("event=safety_model_missing error=%s", exc)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the image-safety check is unavailable; nothing was uploaded",
            ) from exc
        policy = SafetyPolicy(settings.safety_threshold, settings.safety_threshold_children)
        # Close-up portraits get the classifier's framed second look (imagegen/safety.py).
        faces = getattr(face_detector(request), "cascade", None)
        state.safety_check = SafetyCheck(classifier, policy, faces=faces)
    check: SafetyCheck = state.safety_check
    return check


def _refusal(exc: references.PhotoRefusedError) -> HTTPException:
    loc: tuple[str | int, ...] = ("body", "photos")
    if exc.index is not None:
        loc = (*loc, exc.index)
    return field_error(loc, exc.msg, status_code=exc.status_code)


@router.post(
    "/{character_id}/reference-photos",
    status_code=status.HTTP_201_CREATED,
    response_model=ReferencePhotoList,
    dependencies=[IdempotencyKey],
    responses=responses(401, 404, 413, 422, 429, 503),
    summary="Upload reference photos",
)
async def upload_reference_photos(
    character_id: CharacterId,
    photos: Annotated[list[UploadFile], File(description=_UPLOAD_DOC)],
    request: Request,
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    settings: SettingsDep,
    audience: Annotated[
        Audience | None,
        Form(
            description='Who the character is made for: "children" holds the photos to the'
            " image-safety check's stricter threshold. Default: the character's audience; it"
            " can only be made stricter here."
        ),
    ] = None,
) -> ReferencePhotoList:
    """All or nothing: one refused photo (named as `photos.<index>`) uploads none."""
    # A children's character's photos are held to the children's threshold, whatever the form.
    own = await pool.fetchval(
        "SELECT audience FROM characters WHERE id = $1 AND user_id = $2", character_id, user.user_id
    )
    audience = strictest(audience, own)
    limit = settings.reference_max_photos
    if not 1 <= len(photos) <= limit:
        raise field_error(("body", "photos"), f"send between 1 and {limit} photos")
    detector = face_detector(request)
    safety = await asyncio.to_thread(safety_check, request, settings)
    checked = []
    for index, upload in enumerate(photos):
        # One byte over the limit is enough to know; never read a huge part whole.
        data = await upload.read(settings.reference_max_bytes + 1)
        try:
            checked.append(
                await asyncio.to_thread(
                    references.check_photo,
                    data,
                    index,
                    max_bytes=settings.reference_max_bytes,
                    max_pixels=settings.reference_max_pixels,
                    detector=detector,
                    require_face=settings.reference_require_face,
                    safety=safety,
                    audience=audience,
                )
            )
        except references.PhotoRefusedError as exc:
            raise _refusal(exc) from exc
    try:
        added = await references.upload(pool, blobs, user.user_id, character_id, checked, limit)
    except references.PhotoRefusedError as exc:
        raise _refusal(exc) from exc
    except ImagegenError as exc:
        log.warning("event=reference_upload_failed character_id=%s error=%r", character_id, exc)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "object storage is unavailable; nothing was uploaded, please retry",
            headers={"Retry-After": "5"},
        ) from exc
    if added is None:
        raise not_found("character", character_id)
    log.info("event=reference_photos_added character_id=%s count=%d", character_id, len(added))
    ttl = settings.signed_url_ttl_s
    return ReferencePhotoList(items=[await characters.photo_view(blobs, p, ttl) for p in added])


@router.get(
    "/{character_id}/reference-photos",
    response_model=ReferencePhotoList,
    responses=responses(401, 404, 422, 429),
    summary="List reference photos",
)
async def list_reference_photos(
    character_id: CharacterId,
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
    settings: SettingsDep,
) -> ReferencePhotoList:
    if not await characters.existing_ids(pool, user.user_id, [character_id]):
        raise not_found("character", character_id)
    photos = await references.list_for(pool, user.user_id, character_id)
    ttl = settings.signed_url_ttl_s
    return ReferencePhotoList(items=[await characters.photo_view(blobs, p, ttl) for p in photos])


@router.delete(
    "/{character_id}/reference-photos/{photo_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(401, 404, 422, 429),
    summary="Delete a reference photo",
)
async def delete_reference_photo(
    character_id: CharacterId,
    photo_id: PhotoId,
    user: CurrentUser,
    pool: PoolDep,
    blobs: BlobsDep,
) -> Response:
    key = await references.remove(pool, user.user_id, character_id, photo_id)
    if key is None:
        raise not_found("reference photo", photo_id)
    # After the row: an object without a row is invisible, a row without an object is not.
    await references.discard(blobs, [key])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
