"""The quality score and the scene travel from the processed image into the images row and
the image_stored event (real PostgreSQL, in-memory broker and blob store)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import EVENT_ADAPTER, ImageStored
from schemas.topics import TopicNames
from services.storage.handlers import StorageService
from tests.unit.image_builders import image_identity, processed_image

TOPICS = TopicNames("unit")
COMPONENTS = {"sharpness": 0.3, "exposure": 1.0, "contrast": 0.59, "colourfulness": 0.48}


async def _store(storage_pool: asyncpg.Pool, job_id: str, **fields: object) -> ImageStored:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    msg = await processed_image(
        blobs,
        f"png-{job_id}".encode(),
        image=image_identity(
            job_id=job_id, image_id=f"img-{job_id}", user_id="u1", character_id="c1"
        ),
        record={
            "prompt": "watercolor, Mia on a bridge",
            "negative_prompt": "blurry",
            "scene_description": "Mia crosses a moonlit bridge",
            "scene_source": "extractor",
        },
        **fields,
    )
    service = StorageService(storage_pool, blobs, broker.publisher(), TOPICS)
    record = Record(
        topic=TOPICS.images_processed, partition=0, offset=0, key=job_id, value=encode(msg)
    )
    await service.on_processed_image(record)
    (stored,) = [
        e
        for e in (EVENT_ADAPTER.validate_json(r.value) for r in broker.records(TOPICS.events))
        if isinstance(e, ImageStored)
    ]
    return stored


async def test_quality_score_is_stored_and_announced(storage_pool: asyncpg.Pool) -> None:
    stored = await _store(
        storage_pool, "j1", quality_score=0.4211, quality_components=COMPONENTS, flagged=True
    )
    assert stored.data.quality_score == 0.4211 and stored.data.flagged
    assert stored.data.scene_description == "Mia crosses a moonlit bridge"
    assert stored.data.scene_source == "extractor"
    assert stored.data.negative_prompt == "blurry"
    row = await storage_pool.fetchrow(
        "SELECT quality_score, quality_components, flagged, scene_source FROM images"
        " WHERE image_id = 'img-j1'"
    )
    assert row is not None
    assert row["quality_score"] == pytest.approx(0.4211, abs=1e-6)
    assert json.loads(row["quality_components"]) == COMPONENTS
    assert row["flagged"] and row["scene_source"] == "extractor"


async def test_an_unscored_image_stores_no_score(storage_pool: asyncpg.Pool) -> None:
    stored = await _store(storage_pool, "j2")
    assert stored.data.quality_score is None
    row = await storage_pool.fetchrow(
        "SELECT quality_score, quality_components FROM images WHERE image_id = 'img-j2'"
    )
    assert row is not None
    assert row["quality_score"] is None and json.loads(row["quality_components"]) == {}
