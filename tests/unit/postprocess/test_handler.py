"""The postprocess handler end to end over the in-memory broker and blob store."""

from __future__ import annotations

import io

from PIL import Image

from imagegen.blobstore import InMemoryBlobStore, get_verified
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import EVENT_ADAPTER, GenerationFailed
from schemas.images import ProcessedImage
from schemas.topics import TopicNames
from services.postprocess.handlers import Postprocessor
from services.postprocess.settings import PostprocessSettings
from tests.unit.image_builders import raw_image

TOPICS = TopicNames("unit")


async def _deliver(size: int, text: str | None = None) -> InMemoryBroker:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buf, "PNG")
    raw = await raw_image(blobs, buf.getvalue(), overlay_text=text)
    post = Postprocessor(PostprocessSettings(), blobs, broker.publisher(), TOPICS)
    await post.on_raw_image(
        Record(topic=TOPICS.images_raw, partition=0, offset=0, key="j", value=encode(raw))
    )
    for r in broker.records(TOPICS.images_processed):
        for rendition in ProcessedImage.model_validate_json(r.value).renditions:
            await get_verified(blobs, rendition.blob)  # every rendition really is staged
    return broker


async def test_processed_image_has_every_rendition() -> None:
    broker = await _deliver(512, text="Once upon a time")
    (record,) = broker.records(TOPICS.images_processed)
    processed = ProcessedImage.model_validate_json(record.value)
    sizes = {r.name: (r.width, r.height, r.format) for r in processed.renditions}
    assert sizes == {
        "original": (512, 512, "png"),
        "display": (512, 512, "jpeg"),
        "print": (2048, 2048, "jpeg"),
        "thumbnail": (256, 256, "webp"),
    }


async def test_an_undersized_image_is_reported_as_a_failed_attempt_not_stored() -> None:
    broker = await _deliver(32)
    assert broker.records(TOPICS.images_processed) == []
    events = [EVENT_ADAPTER.validate_json(r.value) for r in broker.records(TOPICS.events)]
    (failed,) = [e for e in events if isinstance(e, GenerationFailed)]
    assert failed.data.error_type == "QualityCheckError" and not failed.data.final
    assert "below 64 px" in failed.data.error
