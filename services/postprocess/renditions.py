"""Renditions of one image (blocking Pillow and OpenCV work; call it off the event loop).

Every image gets: the original PNG (kept exactly as generated), a gently enhanced display
JPEG (quality 95, under 5 MB; PNG when the image has transparency), a print-ready version
through an `Upscaler`, and a WebP thumbnail. Scenes asked with page text get it set on a
legible band in the display and print renditions; the original stays clean.

The image is decoded once (`decode`); the renditions (and the service's quality score)
all read that one decoded image. After the shared enhancement the three renditions run
side by side on a small thread pool: resampling and encoding release the GIL (OpenCV's
resize, Pillow's encoders), so one image's latency is about its print rendition's alone.
"""

from __future__ import annotations

import io
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from imagegen.errors import PermanentError
from services.postprocess.overlay import overlay_text
from services.postprocess.upscale import (
    OpenCVSharpenUpscaler,
    Pixels,
    Upscaler,
    downscale,
    fit_within,
    print_size,
)

MIN_SIDE = 64
"""Smaller images fail validation (the demo model's native faces are 64 px)."""


class InvalidImageError(PermanentError):
    """The staged bytes are not an image we can work with."""


class QualityCheckError(PermanentError):
    """The image does not meet the output spec (size, colour mode)."""


@dataclass(frozen=True)
class RenderedImage:
    name: str
    data: bytes
    width: int
    height: int
    format: str
    content_type: str


def open_image(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"not a readable image: {exc}") from exc
    return image


def validate(image: Image.Image) -> None:
    """24-bit RGB or RGBA (or convertible palette/greyscale), at least MIN_SIDE px a side."""
    if image.mode not in {"RGB", "RGBA", "P", "L", "LA"}:
        raise QualityCheckError(f"unsupported colour mode {image.mode}")
    if min(image.size) < MIN_SIDE:
        raise QualityCheckError(f"image is {image.width}x{image.height}, below {MIN_SIDE} px")


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


# Pillow's SMOOTH kernel, the "degenerate" image ImageEnhance.Sharpness blends away from.
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=np.float32) / 13


def sharpen(rgb: Image.Image, factor: float) -> Image.Image:
    """`ImageEnhance.Sharpness(rgb).enhance(factor)` in OpenCV at a third of its CPU; the
    same pixels to within 1 level (rounding rather than truncating), borders kept as
    Pillow keeps them."""
    pixels = np.asarray(rgb)
    smooth = cv2.filter2D(pixels, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = (
        pixels[0],
        pixels[-1],
        pixels[:, 0],
        pixels[:, -1],
    )
    return Image.fromarray(cv2.addWeighted(pixels, factor, smooth, 1 - factor, 0), rgb.mode)


def enhance(image: Image.Image) -> Image.Image:
    """Gentle levels, saturation and sharpening: corrects, never restyles."""
    alpha = image.getchannel("A") if has_alpha(image) else None
    rgb = image.convert("RGB")
    rgb = ImageOps.autocontrast(rgb, cutoff=0.5, preserve_tone=True)
    rgb = ImageEnhance.Color(rgb).enhance(1.05)
    rgb = sharpen(rgb, 1.15)
    if alpha is not None:
        rgb.putalpha(alpha)
    return rgb


def _jpeg(image: Image.Image, quality: int, max_bytes: int) -> bytes:
    rgb = image.convert("RGB")
    # Huffman optimisation pays off for images sent to browsers (about a tenth smaller for
    # a fifth more CPU); on a print-size image it costs more than it saves. No progressive
    # scans: the same pixels, under 3 % smaller, for 2.4x the display encode's CPU.
    web = rgb.width * rgb.height <= 2_000_000
    while True:
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=quality, optimize=web, dpi=(300, 300))
        if buf.tell() <= max_bytes or quality <= 60:
            return buf.getvalue()
        quality -= 5  # stay under the size limit rather than fail


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False, dpi=(300, 300))
    return buf.getvalue()


def _encoded(name: str, image: Image.Image, *, quality: int, max_bytes: int) -> RenderedImage:
    if has_alpha(image):
        return RenderedImage(name, png_bytes(image), image.width, image.height, "png", "image/png")
    data = _jpeg(image, quality, max_bytes)
    return RenderedImage(name, data, image.width, image.height, "jpeg", "image/jpeg")


def decode(data: bytes) -> Image.Image:
    """The staged bytes as a checked image: what every rendition and the score read."""
    image = open_image(data)
    validate(image)
    return image


@cache
def rendition_pool() -> Executor:
    """The threads one image's renditions share (made on first use, kept for the process).

    OpenCV is kept to one thread per call: the renditions already run side by side, and on
    a busy machine OpenCV splitting each resize over its own pool only costs CPU.
    """
    cv2.setNumThreads(1)
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="renditions")


def _jpeg_pixels(bgr: Pixels, quality: int, max_bytes: int) -> bytes:
    """A baseline JPEG of a BGR array by OpenCV (libjpeg-turbo, 4:2:0 like Pillow's default),
    marked 300 dpi like `_jpeg`'s; the same size guard."""
    while True:
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise QualityCheckError("the print rendition could not be encoded")
        data = bytearray(encoded.tobytes())
        if len(data) <= max_bytes or quality <= 60:
            break
        quality -= 5
    # The JFIF header (APP0 right after SOI) holds the density: units 1 (dots per inch),
    # then X and Y density as big-endian 16-bit numbers.
    if data[2:4] == b"\xff\xe0" and data[6:11] == b"JFIF\x00":
        data[13:18] = b"\x01" + (300).to_bytes(2, "big") * 2
    return bytes(data)


def _print(
    enhanced: Image.Image, size: tuple[int, int], text: str | None, upscaler: Upscaler, limit: int
) -> RenderedImage:
    if text is None and enhanced.mode == "RGB" and isinstance(upscaler, OpenCVSharpenUpscaler):
        # The common case stays in OpenCV from the enlargement to the JPEG: no 2048 px
        # Pillow copy, and OpenCV's encoder works from the packed array.
        bgr = np.asarray(cv2.cvtColor(np.asarray(enhanced), cv2.COLOR_RGB2BGR), np.uint8)
        data = _jpeg_pixels(upscaler.upscale_pixels(bgr, size), 95, limit)
        return RenderedImage("print", data, size[0], size[1], "jpeg", "image/jpeg")
    upscaled = upscaler.upscale(enhanced, size)
    printed = overlay_text(upscaled, text) if text else upscaled
    return _encoded("print", printed, quality=95, max_bytes=limit)


def _thumbnail(display: Image.Image, side: int) -> RenderedImage:
    source = display.convert("RGBA" if has_alpha(display) else "RGB")
    thumb = downscale(source, fit_within(source.size, side))
    buf = io.BytesIO()
    # Effort 2 of 6: a 256 px thumbnail about 4 % larger (some 200 bytes) than at libwebp's
    # default 4, for half its encode CPU.
    thumb.save(buf, "WEBP", quality=85, method=2)
    return RenderedImage(
        "thumbnail", buf.getvalue(), thumb.width, thumb.height, "webp", "image/webp"
    )


def render_image(
    image: Image.Image,
    *,
    display_quality: int,
    display_max_bytes: int,
    thumbnail_size: int,
    print_max_bytes: int = 40 * 1024 * 1024,
    text: str | None = None,
    upscaler: Upscaler | None = None,
    executor: Executor | None = None,
) -> list[RenderedImage]:
    """Display, print and thumbnail renditions of a decoded image (`decode`)."""
    enhanced = enhance(image)
    display = overlay_text(enhanced, text) if text else enhanced
    pool = executor or rendition_pool()
    shown = pool.submit(
        _encoded, "display", display, quality=display_quality, max_bytes=display_max_bytes
    )
    thumb = pool.submit(_thumbnail, display, thumbnail_size)
    # The print rendition, the longest, runs on this thread while the others run beside it.
    printed = _print(
        enhanced,
        print_size(image.size),
        text,
        upscaler or OpenCVSharpenUpscaler(),
        print_max_bytes,
    )
    return [shown.result(), printed, thumb.result()]


def render(
    data: bytes,
    *,
    display_quality: int,
    display_max_bytes: int,
    thumbnail_size: int,
    print_max_bytes: int = 40 * 1024 * 1024,
    text: str | None = None,
    upscaler: Upscaler | None = None,
) -> list[RenderedImage]:
    """Display, print and thumbnail renditions; the original PNG is kept as it was staged."""
    return render_image(
        decode(data),
        display_quality=display_quality,
        display_max_bytes=display_max_bytes,
        thumbnail_size=thumbnail_size,
        print_max_bytes=print_max_bytes,
        text=text,
        upscaler=upscaler,
    )
