"""images.raw -> renditions staged in object storage -> images.processed."""

from __future__ import annotations

import asyncio
import time

from imagegen.blobstore import BlobStore, get_verified, put_staging
from imagegen.kafka import Publisher, Record, decode
from schemas.images import ProcessedImage, RawImage, Rendition
from schemas.topics import TopicNames
from services.postprocess.renditions import render
from services.postprocess.settings import PostprocessSettings


class Postprocessor:
    def __init__(
        self,
        settings: PostprocessSettings,
        blobs: BlobStore,
        publisher: Publisher,
        topics: TopicNames,
    ) -> None:
        self._settings = settings
        self._blobs = blobs
        self._publisher = publisher
        self._topics = topics

    async def on_raw_image(self, record: Record) -> None:
        raw = decode(record, RawImage)
        started = time.monotonic()
        data = await get_verified(self._blobs, raw.blob)
        rendered = await asyncio.to_thread(
            render,
            data,
            display_quality=self._settings.display_quality,
            display_max_bytes=self._settings.display_max_bytes,
            thumbnail_size=self._settings.thumbnail_size,
        )
        renditions = [
            Rendition(
                name="original", blob=raw.blob, width=raw.width, height=raw.height, format="png"
            ),
        ]
        for item in rendered:
            ref = await put_staging(self._blobs, item.data, item.content_type)
            renditions.append(
                Rendition(
                    name=item.name,
                    blob=ref,
                    width=item.width,
                    height=item.height,
                    format=item.format,
                )
            )
        elapsed_ms = int((time.monotonic() - started) * 1000)
        processed = ProcessedImage(
            image=raw.image,
            renditions=renditions,
            record=raw.record,
            provider=raw.provider,
            cost_usd=raw.cost_usd,
            timings=raw.timings.model_copy(update={"postprocess_ms": elapsed_ms}),
        )
        await self._publisher.publish(self._topics.images_processed, raw.image.job_id, processed)
