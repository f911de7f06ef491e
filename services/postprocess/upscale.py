"""Print-ready sizes and the upscaler interface.

Print minimums: 2048x2048 for square images (portraits), at least 3000 px wide and 2000 px
high for 16:9 scenes, 2000 px on the short side for other ratios; the aspect ratio is kept,
so a 16:9 scene prints at 3556x2000 and a 4:3 one at 2667x2000. The default upscaler is
an unsharp mask plus bicubic resampling in OpenCV (`OpenCVSharpenUpscaler`); the Pillow
Lanczos one it replaced (`LanczosSharpenUpscaler`, 5x its CPU) stays as the reference that
tests/unit/postprocess/test_resampling.py compares it with. An AI upscaler (Real-ESRGAN,
say) plugs in behind the same interface when its weights are configured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

Pixels = NDArray[np.uint8]

SQUARE_MIN = 2048
SHORT_SIDE_MIN = 2000
WIDE_LONG_SIDE_MIN = 3000
# One unsharp mask for both upscalers: a Gaussian of this radius (sigma, px), 70 % of the
# difference added back where it is at least 2 levels (so flat noise is not amplified).
_SHARPEN_RADIUS = 1.2
_SHARPEN_AMOUNT = 0.7
_SHARPEN_THRESHOLD = 2
# The downscale's anti-alias Gaussian, in output pixels (chosen against Pillow's Lanczos
# thumbnails of a test card and demo faces: tests/unit/postprocess/test_resampling.py).
_PREFILTER = 0.35


class Upscaler(Protocol):
    """Resizes an image up to `size` (width, height) for print."""

    name: str

    def upscale(self, image: Image.Image, size: tuple[int, int]) -> Image.Image: ...


def print_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    short, long = min(size), max(size)
    if short == long:
        side = max(short, SQUARE_MIN)
        return side, side
    scale = max(SHORT_SIDE_MIN / short, 1.0)
    if long / short >= 16 / 9 - 0.01:
        scale = max(scale, WIDE_LONG_SIDE_MIN / long)
    return math.ceil(width * scale), math.ceil(height * scale)


class LanczosSharpenUpscaler:
    """An unsharp mask at the source size, then Lanczos resampling.

    Sharpening before enlarging costs a sixteenth of sharpening after a 4x enlargement
    (about 1 s per 2048 px image on a shared core) and looks the same once resampled.
    """

    name = "lanczos-unsharp"

    def upscale(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        if image.size == size:
            return image.copy()
        sharpened = image.filter(
            ImageFilter.UnsharpMask(
                radius=_SHARPEN_RADIUS,
                percent=round(_SHARPEN_AMOUNT * 100),
                threshold=_SHARPEN_THRESHOLD,
            )
        )
        return sharpened.resize(size, Image.Resampling.LANCZOS)


class OpenCVSharpenUpscaler:
    """The same unsharp mask at the source size, then bicubic resampling, in OpenCV.

    Bicubic rather than OpenCV's Lanczos: OpenCV's 8x8 Lanczos costs more than Pillow's
    Lanczos, while its bicubic is a tenth of that and as close to Pillow's Lanczos output
    (SSIM 0.997 on a photograph at 768 -> 2048 px) as Pillow's own bicubic is. Both OpenCV
    calls release the GIL, so renditions of one image run side by side on threads.
    """

    name = "opencv-unsharp"

    def upscale(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        if image.mode not in {"RGB", "RGBA", "L"}:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        if image.size == size:
            return image.copy()
        return Image.fromarray(self.upscale_pixels(np.asarray(image), size), image.mode)

    def upscale_pixels(self, pixels: Pixels, size: tuple[int, int]) -> Pixels:
        """The same on an array (any channel order): no Pillow copy in or out."""
        if pixels.shape[1::-1] == size:
            return pixels.copy()
        blurred = cv2.GaussianBlur(pixels, (0, 0), _SHARPEN_RADIUS)
        sharpened = cv2.addWeighted(pixels, 1 + _SHARPEN_AMOUNT, blurred, -_SHARPEN_AMOUNT, 0)
        flat = cv2.absdiff(pixels, blurred) < _SHARPEN_THRESHOLD
        np.copyto(sharpened, pixels, where=flat)
        return np.asarray(cv2.resize(sharpened, size, interpolation=cv2.INTER_CUBIC), np.uint8)


def fit_within(size: tuple[int, int], box: int) -> tuple[int, int]:
    """The size a thumbnail of at most `box` px a side gets: Pillow's `thumbnail` rule (the
    aspect ratio kept, each side rounded to whichever integer keeps it best, at least 1)."""
    width, height = size
    if width <= box and height <= box:
        return size
    aspect = width / height

    def nearest(value: float, error: Callable[[int], float]) -> int:
        return max(min(math.floor(value), math.ceil(value), key=error), 1)

    if aspect >= 1:
        return box, nearest(box / aspect, lambda n: 0 if n == 0 else abs(aspect - box / n))
    return nearest(box * aspect, lambda n: abs(aspect - n / box)), box


def downscale(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A reduction in OpenCV (RGB, RGBA or L) that looks like Pillow's Lanczos one.

    A Gaussian prefilter of 0.35 output pixels, then bilinear sampling: a quarter of the
    CPU of Pillow's Lanczos thumbnail. Plain area averaging would be cheaper still, but it
    aliases fine patterns into full-contrast stripes where Lanczos greys them out.
    """
    if image.size == size:
        return image.copy()
    pixels = np.asarray(image)
    fx, fy = image.width / size[0], image.height / size[1]
    if fx > 1 or fy > 1:
        pixels = cv2.GaussianBlur(
            pixels, (0, 0), sigmaX=_PREFILTER * max(fx, 1.0), sigmaY=_PREFILTER * max(fy, 1.0)
        )
    return Image.fromarray(cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR), image.mode)
