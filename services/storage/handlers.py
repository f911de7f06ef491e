"""images.processed -> final objects + metadata row -> image_stored. Idempotent end to end.

PostgreSQL per delivery: one statement when postprocess wrote every rendition to its final
key (may it be stored, what was stored, and the rows written if so: `admit_and_insert`);
otherwise the admission read, the copies, then the insert."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.db import transient_as_retryable
from imagegen.events import EventEmitter
from imagegen.kafka import Publisher, Record, decode
from imagegen.telemetry import tracer
from schemas.events import ImageStored, ImageStoredData, StoredRendition, event_id, image_facts
from schemas.images import ProcessedImage, Rendition
from schemas.topics import TopicNames
from services.storage.layout import CACHE_CONTROL, owner_of, rendition_key
from services.storage.owners import deleted_event
from services.storage.records import admission, admit_and_insert, insert_image, stored_image

log = logging.getLogger(__name__)
SOURCE = "imagegen/storage"


class StorageService:
    def __init__(
        self, pool: asyncpg.Pool, blobs: BlobStore, publisher: Publisher, topics: TopicNames
    ) -> None:
        self._pool = pool
        self._blobs = blobs
        self._events = EventEmitter(publisher, topics.events, SOURCE)

    async def on_processed_image(self, record: Record) -> None:
        msg = decode(record, ProcessedImage)
        image = msg.image
        owner_kind, owner_id = owner_of(image)
        stored = _stored_renditions(msg)
        staged = [
            (r, s) for r, s in zip(msg.renditions, stored, strict=True) if r.blob.key != s.key
        ]
        with tracer().start_as_current_span("record", attributes={"staged": len(staged)}):
            async with transient_as_retryable(), self._pool.acquire() as conn:
                if staged:
                    known = await admission(
                        conn, image.image_id, image.version, image.user_id, owner_kind, owner_id
                    )
                else:
                    # Nothing to copy: may it be stored, and store it, in one round trip.
                    known = await admit_and_insert(conn, msg, stored, owner_kind, owner_id)
        deleted = known.deleted
        if deleted == "discarded":
            # Its job has ended without it: its final objects go, nothing is announced.
            if finals := _final_keys(msg):
                await self._blobs.delete(finals)
            log.info(
                "event=skip_discarded_image image_id=%s version=%d job_id=%s",
                image.image_id,
                image.version,
                image.job_id,
            )
            return
        if deleted is not None:
            finals = _final_keys(msg)
            # Renditions postprocess wrote to their final keys are this image's alone: gone
            # with it. Staged ones go too when the owner was deleted, since nothing else
            # will ever finalise them: don't wait for the lifecycle rule. (Staging keys are
            # content-addressed; an identical image of another owner in flight at this
            # moment would need its bytes staged again.)
            doomed = [r.blob.key for r in msg.renditions] if deleted != "image" else finals
            if doomed:
                await self._blobs.delete(doomed)
            await self._events.emit(deleted_event(image.image_id, image.user_id, [image.version]))
            log.info(
                "event=skip_deleted_image image_id=%s version=%d deleted=%s",
                image.image_id,
                image.version,
                deleted,
            )
            return
        data = known.stored
        if known.inserted:
            data = _new_data(msg, stored)
        elif data is None:
            data = await self._store(msg, stored, staged)
        else:
            # A second copy (a generation run again after a crash): what was stored stays,
            # bytes and cost alike, and the event repeats it.
            log.info(
                "event=image_already_stored image_id=%s version=%d", image.image_id, image.version
            )
        # Emitted on every delivery: its id is stable, so readers see it once.
        await self._events.emit(
            ImageStored(
                id=event_id("image_stored", image.image_id, image.version),
                source=SOURCE,
                subject=f"jobs/{image.job_id}/images/{image.image_index}",
                job_id=image.job_id,
                user_id=image.user_id,
                data=data.model_copy(update=image_facts(image)),
            )
        )

    async def _store(
        self,
        msg: ProcessedImage,
        stored: list[StoredRendition],
        staged: list[tuple[Rendition, StoredRendition]],
    ) -> ImageStoredData:
        """Copy staged renditions to their final keys (those postprocess wrote there
        already need nothing), then write the rows."""
        image = msg.image
        # Copies are idempotent (same source, same destination), so a redelivery may redo them.
        with tracer().start_as_current_span("upload", attributes={"copies": len(staged)}):
            await asyncio.gather(
                *(
                    self._blobs.copy(
                        r.blob.key, s.key, content_type=s.content_type, cache_control=CACHE_CONTROL
                    )
                    for r, s in staged
                )
            )
        async with transient_as_retryable(), self._pool.acquire() as conn:
            # Without staged renditions the rows were tried already, by `admit_and_insert`.
            if not staged or not await insert_image(conn, msg, stored):
                # Another instance stored a copy in between (only while a rebalance hands the
                # partition over): its row wins. The final objects hold whichever copy was
                # copied last; both are renders of the same request.
                data = await stored_image(conn, image.image_id, image.version)
                if data is not None:
                    return data
        return _new_data(msg, stored)


def _stored_renditions(msg: ProcessedImage) -> list[StoredRendition]:
    """Where each rendition is kept for good."""
    image = msg.image
    return [
        StoredRendition(
            name=r.name,
            key=rendition_key(image, r.name, r.format),
            size_bytes=r.blob.size,
            width=r.width,
            height=r.height,
            format=r.format,
            content_type=r.blob.content_type,
        )
        for r in msg.renditions
    ]


def _new_data(msg: ProcessedImage, stored: list[StoredRendition]) -> ImageStoredData:
    """What `image_stored` says of an image this delivery stored."""
    image = msg.image
    original = next(s for s in stored if s.name == "original")
    return ImageStoredData(
        image_id=image.image_id,
        image_index=image.image_index,
        character_id=image.character_id,
        kind=image.kind.value,
        version=image.version,
        size_bytes=original.size_bytes,
        width=original.width,
        height=original.height,
        renditions=stored,
        seed=msg.record.seed,
        model=msg.record.model,
        backend=msg.record.backend,
        provider=msg.provider,
        demo=msg.record.demo,
        cost_usd=msg.cost_usd,
        consistency_score=msg.consistency_score,
        character_scores=msg.character_scores,
        not_scored_reason=msg.not_scored_reason,
        quality_score=msg.quality_score,
        flagged=msg.flagged,
        story_id=image.story_id,
        page_number=image.page_number,
        style=msg.style,
        prompt=msg.record.prompt,
        negative_prompt=msg.record.negative_prompt,
        scene_description=msg.record.scene_description,
        scene_source=msg.record.scene_source,
    )


def _final_keys(msg: ProcessedImage) -> list[str]:
    """The renditions that postprocess wrote straight to their final keys."""
    return [
        r.blob.key
        for r in msg.renditions
        if r.blob.key == rendition_key(msg.image, r.name, r.format)
    ]
