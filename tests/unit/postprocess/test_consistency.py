"""Consistency scoring on real faces (dlib) and the hold-back-and-keep-the-best loop."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from imagegen.blobstore import InMemoryBlobStore, put_staging
from imagegen.db import create_pool, migrate
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import EVENT_ADAPTER, ConsistencyFlagged
from schemas.images import ProcessedImage
from schemas.topics import TopicNames
from services.generator.backends.demo_faces import demo_face
from services.postprocess.consistency import (
    ConsistencyScorer,
    DlibFaceEncoder,
    Embedding,
    Face,
)
from services.postprocess.handlers import ConsistencyCheck, Postprocessor
from services.postprocess.settings import PostprocessSettings
from services.postprocess.variations import (
    MIGRATIONS,
    InMemoryVariationStore,
    PostgresVariationStore,
    VariationStore,
)
from tests.unit.image_builders import image_identity, raw_image
from tests.unit.postprocess.demo_images import demo_backend

TOPICS = TopicNames("unit")
THRESHOLD = PostprocessSettings().consistency_threshold


@pytest.fixture(scope="module")
def encoder() -> DlibFaceEncoder:
    return DlibFaceEncoder()


@pytest.fixture(scope="module")
def faces(encoder: DlibFaceEncoder) -> Iterator[dict[int, list[Image.Image]]]:
    """Three detectable demo faces for each of two identities (demo output)."""
    backend = demo_backend()
    found: dict[int, list[Image.Image]] = {}
    for identity in (1013, 4052):
        found[identity] = []
        for index in range(24):
            image = demo_face(backend, identity, index, 256)
            if encoder.embed(image) is not None:
                found[identity].append(image)
            if len(found[identity]) == 3:
                break
        assert len(found[identity]) == 3, f"too few detectable faces for identity {identity}"
    yield found


def test_same_identity_is_consistent(
    encoder: DlibFaceEncoder, faces: dict[int, list[Image.Image]]
) -> None:
    scorer = ConsistencyScorer(encoder, threshold=THRESHOLD)
    first, second, third = faces[1013]
    reference = scorer.identity_embedding(["a", "b"], {"a": first, "b": second})
    assert (same := scorer.score(third, reference)) is not None and same >= THRESHOLD
    # The same photo, mirrored and darkened, is the same person beyond doubt.
    edited = ImageEnhance.Brightness(ImageOps.mirror(third)).enhance(0.8)
    one = scorer.identity_embedding(["c"], {"c": third})
    assert (copy := scorer.score(edited, one)) is not None and copy > 0.8


def test_different_identity_is_inconsistent(
    encoder: DlibFaceEncoder, faces: dict[int, list[Image.Image]]
) -> None:
    scorer = ConsistencyScorer(encoder, threshold=THRESHOLD)
    a1, a2, _ = faces[1013]
    reference = scorer.identity_embedding(["a1", "a2"], {"a1": a1, "a2": a2})
    for other in faces[4052]:
        assert (score := scorer.score(other, reference)) is not None and score < THRESHOLD


def test_faceless_image_is_not_scored(
    encoder: DlibFaceEncoder, faces: dict[int, list[Image.Image]]
) -> None:
    scorer = ConsistencyScorer(encoder, threshold=THRESHOLD)
    reference = scorer.identity_embedding(["a"], {"a": faces[1013][0]})
    blank = Image.new("RGB", (256, 256), (120, 180, 90))
    assert scorer.score(blank, reference) is None
    assert scorer.identity_embedding(["blank"], {"blank": blank}) is None
    assert scorer.score(faces[1013][0], None) is None


# --- the loop, with an encoder whose embeddings we choose ------------------------------


class ColourEncoder:
    """Embeds an image as its top-left pixel's red value: scores are set by colour."""

    name = "colour"

    def embed(self, image: Image.Image) -> Embedding | None:
        red = image.convert("RGB").getpixel((0, 0))[0]  # type: ignore[index]
        return None if red == 0 else np.array([red / 255.0])

    def faces(self, image: Image.Image, expected: int = 1) -> list[Face]:
        vector = self.embed(image)
        return [] if vector is None else [Face((0, 0, image.width, image.height), vector)]


def _png(red: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (red, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(params=["memory", "postgres"])
async def variations(request: pytest.FixtureRequest) -> AsyncIterator[VariationStore]:
    if request.param == "memory":
        yield InMemoryVariationStore()
        return
    database_url: str = request.getfixturevalue("database_url")
    pool = await create_pool(database_url, "postprocess")
    try:
        await migrate(pool, "postprocess", MIGRATIONS)
        yield PostgresVariationStore(pool)
    finally:
        await pool.close()


async def test_inconsistent_image_is_held_back_then_best_variation_kept(
    variations: VariationStore,
) -> None:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    reference = await put_staging(blobs, _png(255), "image/png")  # embedding 1.0
    scorer = ConsistencyScorer(ColourEncoder(), threshold=0.9)
    post = Postprocessor(
        PostprocessSettings(consistency_threshold=0.9),
        blobs,
        broker.publisher(),
        TOPICS,
        consistency=ConsistencyCheck(scorer, variations),
    )

    async def deliver(variation: int, red: int) -> None:
        raw = await raw_image(
            blobs,
            _png(red),
            image=image_identity(variation=variation),
            record={"seed": variation},
            identity_keys=[reference.key],
            max_variations=2,
        )
        record = Record(
            topic=TOPICS.images_raw, partition=0, offset=variation, key="j", value=encode(raw)
        )
        await post.on_raw_image(record)
        await post.on_raw_image(record)  # redelivered: no second effect

    def processed() -> list[ProcessedImage]:
        return [
            ProcessedImage.model_validate_json(r.value)
            for r in broker.records(TOPICS.images_processed)
        ]

    def flags() -> list[ConsistencyFlagged]:
        events = [EVENT_ADAPTER.validate_json(r.value) for r in broker.records(TOPICS.events)]
        unique = {e.id: e for e in events if isinstance(e, ConsistencyFlagged)}  # readers dedupe
        return list(unique.values())

    await deliver(0, 153)  # score 0.6
    await deliver(1, 204)  # score 0.8: the best
    assert processed() == []
    assert [(f.data.variation, f.data.final) for f in flags()] == [(0, False), (1, False)]

    await deliver(2, 128)  # score ~0.5, last variation: the best one goes on, flagged
    kept = processed()
    assert len(kept) == 2  # the redelivery republishes the same (idempotent) message
    assert kept[0] == kept[1]
    assert kept[0].flagged and kept[0].image.variation == 1
    assert kept[0].consistency_score == pytest.approx(0.8, abs=0.01)
    assert flags()[-1].data.final


async def test_consistent_image_goes_straight_through() -> None:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    reference = await put_staging(blobs, _png(255), "image/png")
    post = Postprocessor(
        PostprocessSettings(consistency_threshold=0.9),
        blobs,
        broker.publisher(),
        TOPICS,
        consistency=ConsistencyCheck(
            ConsistencyScorer(ColourEncoder(), threshold=0.9), InMemoryVariationStore()
        ),
    )
    raw = await raw_image(
        blobs, _png(250), identity_keys=[reference.key, "staging/missing.png"], max_variations=2
    )
    await post.on_raw_image(
        Record(topic=TOPICS.images_raw, partition=0, offset=0, key="j", value=encode(raw))
    )
    (only,) = [
        ProcessedImage.model_validate_json(r.value) for r in broker.records(TOPICS.images_processed)
    ]
    assert not only.flagged and only.consistency_score is not None and only.consistency_score > 0.9
