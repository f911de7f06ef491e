"""The quality score on real pixels (the demo model's GAN faces) and through the handler."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageEnhance, ImageFilter

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.images import ProcessedImage
from schemas.topics import TopicNames
from services.generator.backends.base import CancelToken, GenerationRequest
from services.generator.backends.demo_faces import DemoFaceBackend
from services.postprocess.handlers import Postprocessor
from services.postprocess.quality import WEIGHTS, ImageStatsQualityScorer
from services.postprocess.settings import PostprocessSettings
from tests.unit.image_builders import raw_image

TOPICS = TopicNames("unit")
SCORER = ImageStatsQualityScorer()
COMPONENTS = {"sharpness", "exposure", "contrast", "colourfulness"}


def _quiet(step: int, total: int) -> None:
    return None


@pytest.fixture(scope="module")
def demo() -> DemoFaceBackend:
    backend = DemoFaceBackend()
    backend.load()
    return backend


def _face(backend: DemoFaceBackend, size: int, seed: int = 1) -> bytes:
    request = GenerationRequest(
        prompt="",
        negative_prompt="",
        seed=seed,
        width=size,
        height=size,
        steps=1,
        guidance=1.0,
        identity_seed=1013,
    )
    return backend.generate(request, _quiet, CancelToken()).png


@pytest.mark.parametrize("size", [64, 256])
def test_a_sharp_face_scores_higher_than_its_blurred_copy(demo: DemoFaceBackend, size: int) -> None:
    face = Image.open(io.BytesIO(_face(demo, size)))
    sharp = SCORER.score(face)
    blurred = SCORER.score(face.filter(ImageFilter.GaussianBlur(2)))
    assert sharp.components["sharpness"] > blurred.components["sharpness"]
    assert sharp.score > blurred.score
    assert 0.0 < blurred.score < sharp.score <= 1.0


def test_black_white_and_overexposed_frames_score_low(demo: DemoFaceBackend) -> None:
    face = Image.open(io.BytesIO(_face(demo, 128))).convert("RGB")
    good = SCORER.score(face)
    for colour in ((0, 0, 0), (255, 255, 255)):
        flat = SCORER.score(Image.new("RGB", (256, 256), colour))
        assert flat.score == 0.0
        assert flat.components == dict.fromkeys(COMPONENTS, 0.0)
    blown = SCORER.score(ImageEnhance.Brightness(face).enhance(4.0))
    crushed = SCORER.score(ImageEnhance.Brightness(face).enhance(0.05))
    assert good.score > 0.4
    for bad in (blown, crushed):
        assert bad.components["exposure"] < 0.2
        assert bad.score < 0.1 < good.score - 0.3


def test_the_score_is_deterministic_and_its_components_are_documented(
    demo: DemoFaceBackend,
) -> None:
    data = _face(demo, 256, seed=7)
    first = SCORER.score(Image.open(io.BytesIO(data)))
    again = SCORER.score(Image.open(io.BytesIO(data)))
    assert first == again
    assert set(first.components) == COMPONENTS
    parts = first.components
    expected = parts["exposure"] * sum(w * parts[name] for name, w in WEIGHTS.items())
    assert first.score == pytest.approx(expected, abs=1e-3)


def test_large_transparent_and_palette_images_are_scored() -> None:
    big = Image.radial_gradient("L").resize((2048, 1536)).convert("RGBA")
    big.putalpha(Image.linear_gradient("L").resize((2048, 1536)))
    palette = Image.radial_gradient("L").convert("P")
    for image in (big, palette):
        quality = SCORER.score(image)
        assert 0.0 < quality.score < 1.0
        assert set(quality.components) == COMPONENTS


async def _process(png: bytes, settings: PostprocessSettings) -> ProcessedImage:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    raw = await raw_image(blobs, png, record={"backend": "demo-faces"}, provider="local")
    post = Postprocessor(settings, blobs, broker.publisher(), TOPICS)
    await post.on_raw_image(
        Record(topic=TOPICS.images_raw, partition=0, offset=0, key="j", value=encode(raw))
    )
    (record,) = broker.records(TOPICS.images_processed)
    return ProcessedImage.model_validate_json(record.value)


async def test_the_demo_backends_output_travels_with_its_score(demo: DemoFaceBackend) -> None:
    png = _face(demo, 256)
    processed = await _process(png, PostprocessSettings())
    expected = SCORER.score(Image.open(io.BytesIO(png)))
    assert processed.quality_score == expected.score
    assert processed.quality_components == expected.components
    assert not processed.flagged  # no review threshold by default


async def test_a_score_below_the_review_threshold_flags_the_image(demo: DemoFaceBackend) -> None:
    png = _face(demo, 256)
    score = SCORER.score(Image.open(io.BytesIO(png))).score
    above = await _process(png, PostprocessSettings(quality_review_threshold=score - 0.01))
    below = await _process(png, PostprocessSettings(quality_review_threshold=score + 0.01))
    assert not above.flagged
    assert below.flagged and below.quality_score == score
