"""An image version the scheduler ended unstored (discard_image) is not stored when an attempt
of it arrives after all (one given up as overdue while its job was cancelled): its final
objects go and nothing is announced, since nothing about a job may follow its last word
(issue 18, bug 1). On real SeaweedFS and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from imagegen.object_layout import image_prefix, rendition_key
from schemas.events import EVENT_ADAPTER, ImageStored
from schemas.images import BlobRef, GenerationRecord, ProcessedImage, Rendition
from schemas.jobs import ImageIdentity
from schemas.requests import DiscardImage, JobKind
from tests.integration.test_storage_owners import TOPICS, Storage, _record, storage

pytestmark = pytest.mark.integration
__all__ = ["storage"]  # the fixture, imported


def _identity(image_id: str, version: int = 1) -> ImageIdentity:
    return ImageIdentity(
        job_id=f"job-{image_id}",
        image_id=image_id,
        image_index=0,
        image_count=1,
        user_id="u1",
        character_id="c1",
        version=version,
        kind=JobKind.PACK,
    )


async def at_final_keys(
    storage: Storage, image: ImageIdentity, cost: float = 0.01
) -> ProcessedImage:
    """A processed image whose renditions postprocess wrote to their final keys (a
    reference image carries a face embedding)."""
    renditions = []
    for name, fmt in (("original", "png"), ("display", "jpeg"), ("thumbnail", "webp")):
        key = rendition_key(image, name, fmt)
        body = f"{name}:{uuid.uuid4()}".encode()
        await storage.blobs.put(key, body, f"image/{fmt}")
        blob = BlobRef(key=key, size=len(body), content_type=f"image/{fmt}", sha256="0" * 64)
        renditions.append(Rendition(name=name, blob=blob, width=8, height=8, format=fmt))
    return ProcessedImage(
        image=image,
        renditions=renditions,
        record=GenerationRecord(
            backend="b", model="m", seed=1, steps=1, guidance=1.0, prompt="p", width=8, height=8
        ),
        provider="fake",
        cost_usd=cost,
        face_embedding=[0.1, 0.2] if image.kind is JobKind.REFERENCE else None,
        face_encoder="test",
    )


async def _arrive(storage: Storage, image: ImageIdentity) -> list[str]:
    msg = await at_final_keys(storage, image)
    await storage.service.on_processed_image(_record(msg))
    return [r.blob.key for r in msg.renditions]


def _stored(storage: Storage) -> list[tuple[str, int]]:
    events = [EVENT_ADAPTER.validate_json(r.value) for r in storage.broker.records(TOPICS.events)]
    return [(e.data.image_id, e.data.version) for e in events if isinstance(e, ImageStored)]


def _discard(image: ImageIdentity, prefix: str | None = None) -> DiscardImage:
    return DiscardImage(
        image_id=image.image_id,
        version=image.version,
        job_id=image.job_id,
        user_id=image.user_id,
        reason="cancelled",
        prefix=image_prefix(image) if prefix is None else prefix,
    )


async def test_a_discarded_version_arriving_late_is_thrown_away(storage: Storage) -> None:
    late = _identity("late")
    await storage.request(_discard(late))
    await storage.request(_discard(late))  # a redelivered command changes nothing
    keys = await _arrive(storage, late)

    assert await storage.rows() == set()
    assert _stored(storage) == []
    for key in keys:
        assert not await storage.blobs.exists(key), key
    # Another version of the same image is not concerned.
    newer = _identity("late", version=2)
    await _arrive(storage, newer)
    assert await storage.rows() == {("late", 2)}
    assert _stored(storage) == [("late", 2)]


async def test_a_version_stored_before_its_discard_stays(storage: Storage) -> None:
    early = _identity("early")
    keys = await _arrive(storage, early)
    await storage.request(_discard(early))
    await _arrive(storage, early)  # a second copy: the stored one stays, announced again

    assert await storage.rows() == {("early", 1)}
    assert _stored(storage) == [("early", 1), ("early", 1)]
    for key in keys:
        assert await storage.blobs.exists(key), key


async def test_what_a_failed_attempt_left_at_the_final_keys_goes_with_the_discard(
    storage: Storage,
) -> None:
    half = _identity("half")
    key = rendition_key(half, "original", "png")
    await storage.blobs.put(key, b"written before the attempt failed", "image/png")
    neighbour = _identity("half", version=2)
    kept = rendition_key(neighbour, "original", "png")
    await storage.blobs.put(kept, b"another version", "image/png")

    # A prefix that is not exactly this user's version deletes nothing.
    await storage.request(_discard(half, prefix="users/"))
    assert await storage.blobs.exists(key)
    await storage.request(_discard(half))
    assert not await storage.blobs.exists(key)
    assert await storage.blobs.exists(kept)
    assert await storage.rows() == set() and _stored(storage) == []
