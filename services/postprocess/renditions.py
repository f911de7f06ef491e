"""Renditions of one image (pure Pillow work; call it off the event loop)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from imagegen.errors import PermanentError


class InvalidImageError(PermanentError):
    """The staged bytes are not an image we can work with."""


@dataclass(frozen=True)
class RenderedImage:
    name: str
    data: bytes
    width: int
    height: int
    format: str
    content_type: str


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidImageError(f"not a readable image: {exc}") from exc
    return image


def _jpeg(image: Image.Image, quality: int, max_bytes: int) -> bytes:
    rgb = image.convert("RGB")
    while True:
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
        if buf.tell() <= max_bytes or quality <= 60:
            return buf.getvalue()
        quality -= 5  # stay under the display size limit rather than fail


def render(
    data: bytes, *, display_quality: int, display_max_bytes: int, thumbnail_size: int
) -> list[RenderedImage]:
    """Display JPEG and WebP thumbnail; the original PNG is kept as it was staged."""
    image = _open(data)
    width, height = image.size
    display = _jpeg(image, display_quality, display_max_bytes)
    thumb = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    thumb.thumbnail((thumbnail_size, thumbnail_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, "WEBP", quality=85, method=4)
    return [
        RenderedImage("display", display, width, height, "jpeg", "image/jpeg"),
        RenderedImage("thumbnail", buf.getvalue(), thumb.width, thumb.height, "webp", "image/webp"),
    ]
