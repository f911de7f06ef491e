"""Builders for the image messages the postprocess and storage unit tests feed in.

Each gives the plain case (image 0 of one-image job "j", user "u", character "c", a
"fake" backend) and takes what a test varies as keyword overrides, validated as the
real message would be.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image

from imagegen.blobstore import BlobStore, put_staging
from schemas.images import GenerationRecord, ProcessedImage, RawImage, Rendition
from schemas.jobs import ImageIdentity


def image_identity(**overrides: Any) -> ImageIdentity:
    """Image 0 of one-image job "j" of user "u", character "c"."""
    fields: dict[str, Any] = {
        "job_id": "j",
        "image_id": "i",
        "image_index": 0,
        "image_count": 1,
        "user_id": "u",
        "character_id": "c",
    }
    return ImageIdentity.model_validate(fields | overrides)


def generation_record(width: int, height: int, **overrides: Any) -> GenerationRecord:
    """One step of model "m" on the fake backend, seed 1, prompt "p"."""
    fields: dict[str, Any] = {
        "backend": "fake",
        "model": "m",
        "seed": 1,
        "steps": 1,
        "guidance": 1.0,
        "prompt": "p",
        "width": width,
        "height": height,
    }
    return GenerationRecord.model_validate(fields | overrides)


async def raw_image(
    blobs: BlobStore,
    png: bytes,
    *,
    image: ImageIdentity | None = None,
    record: Mapping[str, Any] | None = None,
    **fields: Any,
) -> RawImage:
    """`png` staged in `blobs` as a generator's output; its size read from the image.

    `image` defaults to `image_identity()`, `record` overrides `generation_record`'s fields and
    `fields` the message's own (provider "fake", cost 0).
    """
    width, height = Image.open(io.BytesIO(png)).size
    message: dict[str, Any] = {
        "image": image or image_identity(),
        "blob": await put_staging(blobs, png, "image/png"),
        "width": width,
        "height": height,
        "record": generation_record(width, height, **(record or {})),
        "provider": "fake",
        "cost_usd": 0.0,
    }
    return RawImage.model_validate(message | fields)


async def processed_image(
    blobs: BlobStore,
    data: bytes,
    *,
    image: ImageIdentity,
    record: Mapping[str, Any] | None = None,
    **fields: Any,
) -> ProcessedImage:
    """`data` staged in `blobs` as a processed image's one rendition, "original" (an 8 x 8
    PNG by its metadata; the bytes are never read).

    `record` overrides `generation_record`'s fields and `fields` the message's own
    (provider "fake", cost 0.01).
    """
    ref = await put_staging(blobs, data, "image/png")
    message: dict[str, Any] = {
        "image": image,
        "renditions": [Rendition(name="original", blob=ref, width=8, height=8, format="png")],
        "record": generation_record(8, 8, **(record or {})),
        "provider": "fake",
        "cost_usd": 0.01,
    }
    return ProcessedImage.model_validate(message | fields)
