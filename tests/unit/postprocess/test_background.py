"""Background removal with a real (tiny) TorchScript model, and face embeddings carried on
processed images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from imagegen.blobstore import InMemoryBlobStore, get_verified
from imagegen.errors import ConfigurationError
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.images import ProcessedImage
from schemas.requests import JobKind
from schemas.topics import TopicNames
from services.postprocess.background import (
    BackgroundRemover,
    TorchScriptSegmenter,
    cut_out,
    load_background_remover,
)
from services.postprocess.consistency import ConsistencyScorer, Embedding, Face
from services.postprocess.handlers import ConsistencyCheck, Postprocessor
from services.postprocess.settings import PostprocessSettings
from services.postprocess.variations import InMemoryVariationStore
from tests.unit.image_builders import image_identity, raw_image

TOPICS = TopicNames("unit")
SIZE = 256
INPUT = 64


class RedIsForeground(torch.nn.Module):
    """Foreground where red dominates; returns (mask, side output) like U^2-Net."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (x[:, 0:1] > x[:, 2:3]).float()
        return mask, mask * 0.5


class WrongShape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x  # 1x3xHxW: not a mask


def _save(module: torch.nn.Module, path: Path) -> Path:
    scripted: Any = torch.jit.script(module)
    scripted.save(str(path))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(RedIsForeground(), tmp_path_factory.mktemp("bg") / "red.pt")


def _half_red() -> Image.Image:
    """Left half red (the "subject"), right half blue (the "background")."""
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:, : SIZE // 2] = (220, 40, 30)
    pixels[:, SIZE // 2 :] = (30, 60, 200)
    return Image.fromarray(pixels, "RGB")


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_mask_follows_the_model_and_becomes_alpha(model_path: Path) -> None:
    remover = TorchScriptSegmenter(model_path, INPUT)
    image = _half_red()
    mask = np.asarray(remover.mask(image))
    assert mask.shape == (SIZE, SIZE)
    # Away from the edge (the mask is upscaled from 64 px) it is exact.
    assert (mask[:, : SIZE // 2 - 4] == 255).all() and (mask[:, SIZE // 2 + 4 :] == 0).all()
    alpha = np.asarray(cut_out(image, remover.mask(image)).getchannel("A"))
    assert (alpha == mask).all()


def test_existing_transparency_is_kept(model_path: Path) -> None:
    image = _half_red().convert("RGBA")
    image.putalpha(Image.new("L", image.size, 100))
    alpha = np.asarray(cut_out(image, TorchScriptSegmenter(model_path, INPUT).mask(image)))
    assert alpha[10, 10, 3] == 100 and alpha[10, SIZE - 10, 3] == 0


def test_models_outside_the_contract_are_refused_at_start(tmp_path: Path) -> None:
    assert load_background_remover(None, INPUT) is None
    with pytest.raises(ConfigurationError, match="no file"):
        load_background_remover(tmp_path / "missing.pt", INPUT)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigurationError, match="not a TorchScript file"):
        load_background_remover(tmp_path / "junk.pt", INPUT)
    wrong = _save(WrongShape(), tmp_path / "wrong.pt")
    with pytest.raises(ConfigurationError, match="1x1xHxW"):
        load_background_remover(wrong, INPUT)


class RedEncoder:
    """Embeds an image by its top-left pixel's red value; no red means no face."""

    name = "red-test"

    def embed(self, image: Image.Image) -> Embedding | None:
        red = image.convert("RGB").getpixel((0, 0))[0]  # type: ignore[index]
        return None if red < 100 else np.array([red / 255.0, 0.5])

    def faces(self, image: Image.Image, expected: int = 1) -> list[Face]:
        vector = self.embed(image)
        return [] if vector is None else [Face((0, 0, image.width, image.height), vector)]


async def _process(
    kind: JobKind,
    background: BackgroundRemover | None,
    image: Image.Image,
    *,
    scored: bool = False,
) -> tuple[ProcessedImage, InMemoryBlobStore]:
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    raw = await raw_image(blobs, _png(image), image=image_identity(kind=kind))
    consistency = (
        ConsistencyCheck(ConsistencyScorer(RedEncoder(), threshold=0.5), InMemoryVariationStore())
        if scored
        else None
    )
    post = Postprocessor(
        PostprocessSettings(),
        blobs,
        broker.publisher(),
        TOPICS,
        consistency=consistency,
        background=background,
    )
    await post.on_raw_image(
        Record(topic=TOPICS.images_raw, partition=0, offset=0, key="j", value=encode(raw))
    )
    (record,) = broker.records(TOPICS.images_processed)
    return ProcessedImage.model_validate_json(record.value), blobs


async def test_portraits_get_a_cutout_rendition(model_path: Path) -> None:
    remover = TorchScriptSegmenter(model_path, INPUT)
    processed, blobs = await _process(JobKind.PORTRAIT, remover, _half_red())
    (cutout,) = [r for r in processed.renditions if r.name == "cutout"]
    assert (cutout.format, cutout.blob.content_type) == ("png", "image/png")
    assert (cutout.width, cutout.height) == (SIZE, SIZE)
    image = Image.open(io.BytesIO(await get_verified(blobs, cutout.blob)))
    assert image.format == "PNG" and image.mode == "RGBA"
    alpha = np.asarray(image.getchannel("A"))
    expected = np.asarray(remover.mask(_half_red()))
    # The cutout is made from the enhanced image; its mask is the same to a level or so.
    assert np.abs(alpha.astype(int) - expected.astype(int)).max() <= 2
    assert alpha[:, :100].min() >= 253 and alpha[:, 160:].max() <= 2
    names = {r.name for r in processed.renditions}
    assert names == {"original", "display", "print", "thumbnail", "cutout"}


async def test_no_cutout_for_scenes_or_without_a_model(model_path: Path) -> None:
    remover = TorchScriptSegmenter(model_path, INPUT)
    plain = {"original", "display", "print", "thumbnail"}
    scene, _ = await _process(JobKind.SCENE, remover, _half_red())
    assert {r.name for r in scene.renditions} == plain
    unconfigured, _ = await _process(JobKind.PORTRAIT, None, _half_red())
    assert {r.name for r in unconfigured.renditions} == plain


async def test_face_embedding_travels_with_the_processed_image() -> None:
    face = Image.new("RGB", (128, 128), (204, 10, 10))
    portrait, _ = await _process(JobKind.REFERENCE, None, face, scored=True)
    assert portrait.face_embedding == pytest.approx([0.8, 0.5])
    assert portrait.face_encoder == "red-test"
    assert portrait.consistency_score is None  # nothing to compare with yet

    faceless, _ = await _process(
        JobKind.PORTRAIT, None, Image.new("RGB", (128, 128), (10, 10, 10)), scored=True
    )
    assert faceless.face_embedding is None and faceless.face_encoder == ""

    unscored, _ = await _process(JobKind.PORTRAIT, None, face)
    assert unscored.face_embedding is None
