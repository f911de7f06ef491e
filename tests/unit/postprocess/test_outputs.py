"""Renditions go straight to their final keys, once; staged only when they must not."""

from __future__ import annotations

import io

from PIL import Image

from imagegen.blobstore import STAGING_PREFIX, InMemoryBlobStore, get_verified
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from imagegen.object_layout import CACHE_CONTROL, rendition_key
from schemas.images import ProcessedImage, RawImage
from schemas.topics import TopicNames
from services.postprocess.handlers import Postprocessor
from services.postprocess.outputs import write_renditions
from services.postprocess.renditions import RenderedImage
from services.postprocess.settings import PostprocessSettings
from tests.unit.image_builders import image_identity, raw_image

TOPICS = TopicNames("unit")
IMAGE = image_identity()
FINALS = "users/u/characters/c/images/i/v1/"


def _png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (128, 128), colour).save(buf, "PNG")
    return buf.getvalue()


async def _process(blobs: InMemoryBlobStore, raw: RawImage) -> ProcessedImage:
    broker = InMemoryBroker()
    post = Postprocessor(PostprocessSettings(), blobs, broker.publisher(), TOPICS)
    await post.on_raw_image(
        Record(topic=TOPICS.images_raw, partition=0, offset=0, key="j", value=encode(raw))
    )
    (record,) = broker.records(TOPICS.images_processed)
    return ProcessedImage.model_validate_json(record.value)


async def test_renditions_and_original_are_put_once_at_their_final_keys() -> None:
    blobs = InMemoryBlobStore()
    raw = await raw_image(blobs, _png((90, 120, 200)))
    processed = await _process(blobs, raw)
    keys = {r.name: r.blob.key for r in processed.renditions}
    assert keys == {
        "original": FINALS + "original.png",
        "display": FINALS + "display.jpg",
        "print": FINALS + "print.jpg",
        "thumbnail": FINALS + "thumbnail.webp",
    }
    for rendition in processed.renditions:
        assert rendition.blob.key == rendition_key(IMAGE, rendition.name, rendition.format)
        await get_verified(blobs, rendition.blob)  # the claim check matches the bytes
        assert blobs.cache_control[rendition.blob.key] == CACHE_CONTROL
    assert await blobs.get(keys["original"]) == await blobs.get(raw.blob.key)
    # Nothing staged but the generator's original: storage has nothing to copy.
    assert await blobs.list(STAGING_PREFIX) == [raw.blob.key]


async def test_a_second_copy_is_staged_and_leaves_the_finals_alone() -> None:
    """A generation run again (other bytes) after the first copy reached its final keys:
    the finals keep the first copy; the second is staged for storage to decide on."""
    blobs = InMemoryBlobStore()
    first = await _process(blobs, await raw_image(blobs, _png((90, 120, 200))))
    finals = {key: await blobs.get(key) for key in await blobs.list(FINALS)}

    second_raw = await raw_image(blobs, _png((200, 60, 60)))
    second = await _process(blobs, second_raw)
    assert {key: await blobs.get(key) for key in await blobs.list(FINALS)} == finals
    assert second.renditions[0].blob == second_raw.blob
    for rendition in second.renditions:
        assert rendition.blob.key.startswith(STAGING_PREFIX)
        await get_verified(blobs, rendition.blob)
    assert [r.name for r in second.renditions] == [r.name for r in first.renditions]


async def test_held_back_renditions_are_staged() -> None:
    blobs = InMemoryBlobStore()
    raw = await raw_image(blobs, _png((10, 200, 10)))
    rendered = [RenderedImage("display", b"jpeg bytes", 128, 128, "jpeg", "image/jpeg")]
    renditions = await write_renditions(blobs, raw, b"unused", rendered, final=False)
    assert [r.blob.key.startswith(STAGING_PREFIX) for r in renditions] == [True, True]
    assert renditions[0].blob == raw.blob
    assert await blobs.list("users/") == []
