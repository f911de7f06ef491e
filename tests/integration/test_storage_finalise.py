"""A portrait through postprocess (real renditions, dlib embedding, a TorchScript cut-out
model) and storage on real SeaweedFS and PostgreSQL; signed URLs expire."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import torch
from PIL import Image
from pydantic import SecretStr

from imagegen.blobstore import S3BlobStore, put_staging
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from imagegen.object_layout import CACHE_CONTROL
from imagegen.settings import S3Settings
from imagegen.stack.s3 import ensure_bucket
from schemas.events import EVENT_ADAPTER, ImageStored
from schemas.images import BlobRef, GenerationRecord, ProcessedImage, RawImage, Rendition
from schemas.jobs import ImageIdentity
from schemas.requests import JobKind
from schemas.topics import TopicNames
from services.generator.backends.base import CancelToken, GenerationRequest
from services.generator.backends.demo_faces import DemoFaceBackend
from services.postprocess.background import TorchScriptSegmenter
from services.postprocess.consistency import ConsistencyScorer, DlibFaceEncoder
from services.postprocess.handlers import ConsistencyCheck, Postprocessor
from services.postprocess.settings import PostprocessSettings
from services.postprocess.variations import InMemoryVariationStore
from services.storage.handlers import StorageService
from tests.fixtures.servers import S3Info

TOPICS = TopicNames("it")


@pytest.fixture
async def blobs(seaweed: S3Info) -> AsyncIterator[S3BlobStore]:
    bucket = f"finalise-{uuid.uuid4().hex[:10]}"
    ensure_bucket(seaweed.endpoint, bucket, seaweed.access_key, seaweed.secret_key, seaweed.region)
    settings = S3Settings(
        endpoint=seaweed.endpoint,
        bucket=bucket,
        region=seaweed.region,
        access_key=SecretStr(seaweed.access_key),
        secret_key=SecretStr(seaweed.secret_key),
    )
    async with S3BlobStore(settings) as store:
        yield store


class CentreDisc(torch.nn.Module):
    """Foreground is the disc in the middle of the frame (radius: 40% of the side)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        ys = torch.arange(h, dtype=torch.float32).view(h, 1) / (h - 1) - 0.5
        xs = torch.arange(w, dtype=torch.float32).view(1, w) / (w - 1) - 0.5
        return ((ys * ys + xs * xs) < 0.16).float().view(1, 1, h, w)


def _demo_face() -> bytes:
    """A 256 px demo face that dlib detects (seed checked)."""
    backend = DemoFaceBackend()
    backend.load()
    request = GenerationRequest(
        prompt="",
        negative_prompt="",
        seed=1000,
        width=256,
        height=256,
        steps=1,
        guidance=1.0,
        identity_seed=1013,
    )
    return backend.generate(request, lambda step, total: None, CancelToken()).png


async def test_portrait_is_stored_with_every_rendition_once(
    blobs: S3BlobStore, storage_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    model: Any = torch.jit.script(CentreDisc())
    model.save(str(tmp_path / "disc.pt"))
    broker = InMemoryBroker()
    scorer = ConsistencyScorer(await asyncio.to_thread(DlibFaceEncoder), threshold=0.45)
    post = Postprocessor(
        PostprocessSettings(),
        blobs,
        broker.publisher(),
        TOPICS,
        consistency=ConsistencyCheck(scorer, InMemoryVariationStore()),
        background=TorchScriptSegmenter(tmp_path / "disc.pt", 64),
    )
    image = ImageIdentity(
        job_id="job-1",
        image_id="img-1",
        image_index=0,
        image_count=1,
        user_id="u1",
        character_id="c1",
        kind=JobKind.PORTRAIT,
    )
    raw = RawImage(
        image=image,
        blob=await put_staging(blobs, await asyncio.to_thread(_demo_face), "image/png"),
        width=256,
        height=256,
        record=GenerationRecord(
            backend="demo",
            model="dcgan",
            seed=1000,
            steps=1,
            guidance=1.0,
            prompt="a portrait of Mia",
            negative_prompt="blurry",
            width=256,
            height=256,
            scene_description="in a garden",
            scene_source="request",
            conditioning="ip_adapter",
        ),
        provider="demo",
        cost_usd=0.02,
        style="watercolor",
    )
    await post.on_raw_image(Record(topic="raw", partition=0, offset=0, key="j", value=encode(raw)))
    (processed_record,) = broker.records(TOPICS.images_processed)
    processed = ProcessedImage.model_validate_json(processed_record.value)
    assert processed.face_embedding is not None and len(processed.face_embedding) == 128

    # Postprocess wrote every rendition straight to its final key: nothing was staged but
    # the generator's original, so storage has nothing to copy.
    assert await blobs.list("staging/") == [raw.blob.key]
    assert all(r.blob.key.startswith("users/u1/") for r in processed.renditions)

    storage = StorageService(storage_pool, blobs, broker.publisher(), TOPICS)
    record = Record(topic="p", partition=0, offset=0, key="j", value=processed_record.value)
    await storage.on_processed_image(record)
    finals = sorted(await blobs.list("users/"))
    await storage.on_processed_image(record)  # redelivered: nothing stored twice
    assert sorted(await blobs.list("users/")) == finals

    prefix = "users/u1/characters/c1/images/img-1/v1/"
    expected = {
        "original": ("png", "PNG", (256, 256), "RGB"),
        "display": ("jpg", "JPEG", (256, 256), "RGB"),
        "print": ("jpg", "JPEG", (2048, 2048), "RGB"),
        "thumbnail": ("webp", "WEBP", (256, 256), "RGB"),
        "cutout": ("png", "PNG", (256, 256), "RGBA"),
    }
    assert finals == sorted(f"{prefix}{name}.{ext}" for name, (ext, *_) in expected.items())
    stored = [
        e
        for e in (EVENT_ADAPTER.validate_json(r.value) for r in broker.records(TOPICS.events))
        if isinstance(e, ImageStored)
    ]
    assert len({e.id for e in stored}) == 1
    data = stored[0].data
    assert (data.negative_prompt, data.scene_description, data.scene_source) == (
        "blurry",
        "in a garden",
        "request",
    )
    for rendition in data.renditions:
        _, fmt, size, mode = expected[rendition.name]
        body = await blobs.get(rendition.key)
        opened = Image.open(io.BytesIO(body))
        assert (opened.format, opened.size, opened.mode) == (fmt, size, mode), rendition.name
        assert (rendition.width, rendition.height) == size
        assert rendition.size_bytes == len(body)
    async with httpx.AsyncClient() as http:
        response = await http.get(await blobs.presign_get(prefix + "print.jpg", 60))
    assert response.headers["cache-control"] == CACHE_CONTROL
    assert response.headers["content-type"] == "image/jpeg"
    cutout = Image.open(io.BytesIO(await blobs.get(prefix + "cutout.png")))
    assert cutout.getpixel((128, 128))[3] == 255 and cutout.getpixel((2, 2))[3] == 0  # type: ignore[index]

    row = await storage_pool.fetchrow("SELECT * FROM images")
    assert await storage_pool.fetchval("SELECT count(*) FROM images") == 1
    assert (row["prompt"], row["negative_prompt"], row["model"], row["style"]) == (
        "a portrait of Mia",
        "blurry",
        "dcgan",
        "watercolor",
    )
    assert (row["conditioning"], row["scene_source"], row["parent_version"]) == (
        "ip_adapter",
        "request",
        None,
    )
    assert row["review_status"] == "pending" and row["width"] == 256

    references = await storage_pool.fetch("SELECT * FROM character_references")
    assert len(references) == 1
    ref = references[0]
    assert (ref["user_id"], ref["character_id"], ref["kind"], ref["encoder"]) == (
        "u1",
        "c1",
        "portrait",
        "dlib-resnet-v1",
    )
    assert ref["original_key"] == prefix + "original.png"
    assert list(ref["embedding"]) == pytest.approx(processed.face_embedding)


async def test_a_second_copy_of_an_image_leaves_the_stored_one(
    blobs: S3BlobStore, storage_pool: asyncpg.Pool
) -> None:
    """An attempt run twice (generator killed after its image went out) yields two copies with
    their own bytes and cost. Storage keeps the first; the event for the second repeats what
    was stored, so the scheduler books the cost of the image that was delivered."""
    broker = InMemoryBroker()
    storage = StorageService(storage_pool, blobs, broker.publisher(), TOPICS)
    image = ImageIdentity(
        job_id="job-2",
        image_id="img-2",
        image_index=0,
        image_count=1,
        user_id="u1",
        character_id="c1",
        kind=JobKind.SCENE,
    )

    async def copy(body: bytes, cost: float, offset: int) -> None:
        processed = ProcessedImage(
            image=image,
            renditions=[
                Rendition(
                    name="original",
                    blob=await put_staging(blobs, body, "image/png"),
                    width=8,
                    height=8,
                    format="png",
                )
            ],
            record=GenerationRecord(
                backend="demo",
                model="dcgan",
                seed=7,
                steps=1,
                guidance=1.0,
                prompt="Mia in the rain",
                width=8,
                height=8,
            ),
            provider="local-gpu",
            cost_usd=cost,
        )
        record = Record(topic="p", partition=0, offset=offset, key="j", value=encode(processed))
        await storage.on_processed_image(record)

    await copy(b"first copy", 0.000412, 0)
    await copy(b"second copy, run again", 0.000449, 1)

    (key,) = await blobs.list("users/")
    assert await blobs.get(key) == b"first copy"
    row = await storage_pool.fetchrow("SELECT cost_usd, size_bytes FROM images")
    assert (str(row["cost_usd"]), row["size_bytes"]) == ("0.000412", len(b"first copy"))
    events = [EVENT_ADAPTER.validate_json(r.value) for r in broker.records(TOPICS.events)]
    stored = [e for e in events if isinstance(e, ImageStored)]
    assert len(stored) == 2 and stored[0].id == stored[1].id
    assert stored[1].data == stored[0].data
    assert stored[1].data.cost_usd == 0.000412


def _scene(seed: int) -> RawImage:
    return RawImage(
        image=ImageIdentity(
            job_id="job-3",
            image_id="img-3",
            image_index=0,
            image_count=1,
            user_id="u1",
            character_id="c1",
            kind=JobKind.SCENE,
        ),
        blob=BlobRef(key="", size=0, sha256="0" * 64, content_type="image/png"),
        width=128,
        height=128,
        record=GenerationRecord(
            backend="fake",
            model="m",
            seed=seed,
            steps=1,
            guidance=1.0,
            prompt="Mia in the rain",
            width=128,
            height=128,
        ),
        provider="local-gpu",
        cost_usd=0.001 * seed,
    )


async def test_a_generation_run_again_through_postprocess_leaves_the_stored_finals(
    blobs: S3BlobStore, storage_pool: asyncpg.Pool
) -> None:
    """Postprocess writes finals straight to their keys; a second copy of the image (a
    generation run again, other bytes) must not overwrite what storage recorded."""
    broker = InMemoryBroker()
    post = Postprocessor(PostprocessSettings(), blobs, broker.publisher(), TOPICS)
    storage = StorageService(storage_pool, blobs, broker.publisher(), TOPICS)
    for offset, (seed, colour) in enumerate([(1, (90, 120, 200)), (2, (200, 60, 60))]):
        buf = io.BytesIO()
        Image.new("RGB", (128, 128), colour).save(buf, "PNG")
        raw = _scene(seed).model_copy(
            update={"blob": await put_staging(blobs, buf.getvalue(), "image/png")}
        )
        await post.on_raw_image(
            Record(topic="raw", partition=0, offset=offset, key="j", value=encode(raw))
        )
        processed = broker.records(TOPICS.images_processed)[-1]
        await storage.on_processed_image(
            Record(topic="p", partition=0, offset=offset, key="j", value=processed.value)
        )
        if offset == 0:
            finals = {k: await blobs.get(k) for k in await blobs.list("users/")}
    assert len(finals) == 4
    assert {k: await blobs.get(k) for k in await blobs.list("users/")} == finals
    original = Image.open(io.BytesIO(finals["users/u1/characters/c1/images/img-3/v1/original.png"]))
    assert original.getpixel((5, 5)) == (90, 120, 200)
    row = await storage_pool.fetchrow("SELECT cost_usd, size_bytes, renditions FROM images")
    assert float(row["cost_usd"]) == 0.001
    stored = {r["key"]: r["size_bytes"] for r in json.loads(row["renditions"])}
    assert stored == {k: len(v) for k, v in finals.items()}


async def test_expired_signed_url_is_refused(blobs: S3BlobStore) -> None:
    ref = await put_staging(blobs, b"short-lived bytes", "image/png")
    async with httpx.AsyncClient() as http:
        # Long enough to be fetched once on a loaded machine (1 s expired before the first
        # GET in one CI run); the signature's own expiry is what is under test.
        url = await blobs.presign_get(ref.key, 5)
        assert (await http.get(url)).content == b"short-lived bytes"
        await asyncio.sleep(6.1)
        assert (await http.get(url)).status_code == 403
