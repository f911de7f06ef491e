"""The OpenCV renditions look like the Pillow Lanczos ones they replaced.

Each rendition as it is now (OpenCV unsharp + bicubic print; Gaussian-prefiltered
bilinear thumbnail) is compared, decoded, with the same rendition made the old way
(Pillow unsharp + Lanczos, Pillow's Lanczos thumbnail, the same encoders), on demo faces
and on a test card with hard edges, a fine grating and text (where resamplers differ most).

The metric is SSIM on luma (Wang et al. 2004: 11 px Gaussian window, sigma 1.5, K1 0.01,
K2 0.03) plus PSNR on RGB. The bounds sit at what the renditions' own encoding already
costs: re-encoding the old print as JPEG q95 measured PSNR 47-51 dB (SSIM 0.997-0.999),
the old thumbnail as WebP q85 35-42 dB (SSIM 0.96-0.985) on a photograph and a demo face.
Measured now: print SSIM 0.9956-0.9987 and 46.8-49.4 dB, thumbnail SSIM 0.987-0.994 and
36.7-41.3 dB, so the resamplers differ by about what one encode does. Nearest-neighbour
resampling (blocky, aliased) fails both bounds (the last tests), so they do catch a
visibly worse rendition.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

from services.generator.backends.base import CancelToken, GenerationRequest
from services.generator.backends.demo_faces import DemoFaceBackend
from services.postprocess.renditions import (
    RenderedImage,
    decode,
    enhance,
    render_image,
    sharpen,
)
from services.postprocess.upscale import LanczosSharpenUpscaler, print_size

Pixels = NDArray[np.uint8]

PRINT_SSIM, PRINT_PSNR = 0.99, 40.0
THUMB_SSIM, THUMB_PSNR = 0.97, 33.0


def ssim(a: Pixels, b: Pixels) -> float:
    """Mean SSIM of the two images' luma (BT.601, as Pillow's "L")."""
    weights = np.array([0.299, 0.587, 0.114])
    x, y = a.astype(np.float64) @ weights, b.astype(np.float64) @ weights
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(cv2.GaussianBlur(v, (11, 11), 1.5), np.float64)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def psnr(a: Pixels, b: Pixels) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _face(seed: int, identity: int) -> Image.Image:
    backend = DemoFaceBackend()
    backend.load()
    request = GenerationRequest(
        prompt="",
        negative_prompt="",
        seed=seed,
        width=768,
        height=768,
        steps=1,
        guidance=1.0,
        identity_seed=identity,
    )
    png = backend.generate(request, lambda step, total: None, CancelToken()).png
    return decode(png)


def _test_card() -> Image.Image:
    """Edges, a fine grating, a colour ramp and text: a hard case for any resampler."""
    side = 768
    ramp = np.linspace(0, 255, side, dtype=np.float64)
    pixels = np.zeros((side, side, 3), dtype=np.uint8)
    pixels[..., 0] = ramp[None, :].astype(np.uint8)
    pixels[..., 1] = ramp[:, None].astype(np.uint8)
    pixels[..., 2] = 128
    xs = np.arange(side)
    pixels[100:300, 100:700] = np.where((xs[100:700] // 3) % 2 == 0, 230, 25)[None, :, None]
    card = Image.fromarray(pixels)
    draw = ImageDraw.Draw(card)
    draw.ellipse((420, 380, 700, 660), fill=(200, 40, 40), outline=(0, 0, 0), width=4)
    font = ImageFont.load_default(size=28)
    draw.text((40, 400), "Once upon a time,\nin a garden", font=font, fill=(10, 10, 10))
    return card


IMAGES = {"face-a": lambda: _face(1000, 1013), "face-b": lambda: _face(7, 42), "card": _test_card}


def _pixels(rendition: RenderedImage) -> Pixels:
    return np.asarray(Image.open(io.BytesIO(rendition.data)).convert("RGB"))


def _pillow_enhance(image: Image.Image) -> Image.Image:
    """`enhance` as it was, all in Pillow (the test images have no alpha)."""
    rgb = ImageOps.autocontrast(image.convert("RGB"), cutoff=0.5, preserve_tone=True)
    return ImageEnhance.Sharpness(ImageEnhance.Color(rgb).enhance(1.05)).enhance(1.15)


def _old_print(image: Image.Image) -> Pixels:
    upscaled = LanczosSharpenUpscaler().upscale(_pillow_enhance(image), print_size(image.size))
    buf = io.BytesIO()
    upscaled.convert("RGB").save(buf, "JPEG", quality=95)
    return np.asarray(Image.open(buf).convert("RGB"))


def _old_thumbnail(image: Image.Image) -> Pixels:
    thumb = _pillow_enhance(image)
    thumb.thumbnail((256, 256), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "WEBP", quality=85, method=4)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module", params=sorted(IMAGES))
def rendered(request: pytest.FixtureRequest) -> tuple[Image.Image, dict[str, RenderedImage]]:
    image = IMAGES[request.param]()
    out = render_image(
        image, display_quality=95, display_max_bytes=5 * 1024 * 1024, thumbnail_size=256
    )
    return image, {r.name: r for r in out}


def test_print_matches_the_pillow_lanczos_print(
    rendered: tuple[Image.Image, dict[str, RenderedImage]],
) -> None:
    image, out = rendered
    new, old = _pixels(out["print"]), _old_print(image)
    assert new.shape == old.shape == (2048, 2048, 3)
    assert ssim(new, old) >= PRINT_SSIM
    assert psnr(new, old) >= PRINT_PSNR


def test_thumbnail_matches_the_pillow_lanczos_thumbnail(
    rendered: tuple[Image.Image, dict[str, RenderedImage]],
) -> None:
    image, out = rendered
    new, old = _pixels(out["thumbnail"]), _old_thumbnail(image)
    assert new.shape == old.shape == (256, 256, 3)
    assert ssim(new, old) >= THUMB_SSIM
    assert psnr(new, old) >= THUMB_PSNR


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_enhancement_sharpens_like_pillow_to_within_one_level(name: str) -> None:
    rgb = IMAGES[name]().convert("RGB")
    old = np.asarray(ImageEnhance.Sharpness(rgb).enhance(1.15)).astype(np.int16)
    new = np.asarray(sharpen(rgb, 1.15)).astype(np.int16)
    assert int(np.abs(old - new).max()) <= 1
    assert float(np.mean(old != new)) < 0.1


def test_the_bounds_catch_a_visibly_worse_resampler() -> None:
    """Nearest neighbour (blocky print, aliased thumbnail) fails both bounds on the card."""
    card = _test_card()
    enhanced = enhance(card)
    blocky = np.asarray(enhanced.resize((2048, 2048), Image.Resampling.NEAREST))
    old = _old_print(card)
    assert ssim(blocky, old) < PRINT_SSIM or psnr(blocky, old) < PRINT_PSNR
    aliased = np.asarray(enhanced.resize((256, 256), Image.Resampling.NEAREST))
    old_thumb = _old_thumbnail(card)
    assert ssim(aliased, old_thumb) < THUMB_SSIM and psnr(aliased, old_thumb) < THUMB_PSNR


def test_the_metric_is_exact_for_identical_images_and_symmetric() -> None:
    card = np.asarray(_test_card())
    assert ssim(card, card) == pytest.approx(1.0)
    noise = np.random.default_rng(3).normal(0, 8, card.shape)
    noisy = np.clip(card + noise, 0, 255).astype(np.uint8)
    assert ssim(card, noisy) == pytest.approx(ssim(noisy, card))
    assert ssim(card, noisy) < 0.95
