"""Print-ready sizes and the upscaler interface.

Print minimums: 2048x2048 for square images (portraits), at least 3000 px wide and 2000 px
high for 16:9 scenes, 2000 px on the short side for other ratios; the aspect ratio is kept,
so a 16:9 scene prints at 3556x2000 and a 4:3 one at 2667x2000. The default upscaler is
Lanczos resampling plus an unsharp mask; an AI upscaler (Real-ESRGAN, say) plugs in behind
the same interface when its weights are configured.
"""

from __future__ import annotations

import math
from typing import Protocol

from PIL import Image, ImageFilter

SQUARE_MIN = 2048
SHORT_SIDE_MIN = 2000
WIDE_LONG_SIDE_MIN = 3000


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
        sharpened = image.filter(ImageFilter.UnsharpMask(radius=1.2, percent=70, threshold=2))
        return sharpened.resize(size, Image.Resampling.LANCZOS)
