"""images.processed -> final objects + metadata row -> image_stored. Idempotent end to end."""

from __future__ import annotations

import asyncio
import json
import logging

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.db import transient_as_retryable
from imagegen.events import EventEmitter
from imagegen.kafka import Publisher, Record, decode
from schemas.events import ImageStored, ImageStoredData, StoredRendition, event_id
from schemas.images import ProcessedImage
from schemas.topics import TopicNames
from services.storage.layout import rendition_key
from services.storage.lifecycle import deleted_event

log = logging.getLogger(__name__)
SOURCE = "imagegen/storage"


class StorageService:
    def __init__(
        self, pool: asyncpg.Pool, blobs: BlobStore, publisher: Publisher, topics: TopicNames
    ) -> None:
        self._pool = pool
        self._blobs = blobs
        self._events = EventEmitter(publisher, topics.events, SOURCE)

    async def _is_deleted(self, image_id: str) -> bool:
        async with transient_as_retryable(), self._pool.acquire() as conn:
            return bool(
                await conn.fetchval("SELECT true FROM deleted_images WHERE image_id = $1", image_id)
            )

    async def on_processed_image(self, record: Record) -> None:
        msg = decode(record, ProcessedImage)
        image = msg.image
        if await self._is_deleted(image.image_id):
            await self._events.emit(deleted_event(image.image_id, image.user_id, [image.version]))
            log.info(
                "event=skip_deleted_image image_id=%s version=%d", image.image_id, image.version
            )
            return
        stored = [
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
        # Copies are idempotent (same source, same destination), so a redelivery may redo them.
        await asyncio.gather(
            *(
                self._blobs.copy(r.blob.key, s.key)
                for r, s in zip(msg.renditions, stored, strict=True)
            )
        )
        original = next(s for s in stored if s.name == "original")
        async with transient_as_retryable(), self._pool.acquire() as conn:
            inserted = await conn.fetchval(
                "INSERT INTO images (image_id, version, job_id, image_index, user_id, character_id,"
                " kind, width, height, size_bytes, renditions, generation, provider, cost_usd,"
                " consistency_score, flagged, story_id, page_number, style)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)"
                " ON CONFLICT (image_id, version) DO NOTHING RETURNING true",
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
                msg.record.model_dump_json(),
                msg.provider,
                msg.cost_usd,
                msg.consistency_score,
                msg.flagged,
                image.story_id,
                image.page_number,
                msg.style,
            )
        if not inserted:
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
                data=ImageStoredData(
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
                    flagged=msg.flagged,
                    story_id=image.story_id,
                    page_number=image.page_number,
                    style=msg.style,
                    prompt=msg.record.prompt,
                ),
            )
        )
