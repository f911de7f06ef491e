"""Renditions: every one present, with the right size and format; overlay; validation."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from services.postprocess.renditions import (
    InvalidImageError,
    QualityCheckError,
    RenderedImage,
    render,
)
from services.postprocess.upscale import print_size


def _image(width: int, height: int, mode: str = "RGB") -> bytes:
    image = Image.new(mode, (width, height))
    # A gradient, so enhancement and JPEG sizes are realistic rather than trivial.
    image.putdata(
        [
            (x * 255 // width, y * 255 // height, 128, 200)[: len(mode)]
            for y in range(height)
            for x in range(width)
        ]
    )
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _render(data: bytes, text: str | None = None) -> dict[str, RenderedImage]:
    out = render(
        data, display_quality=95, display_max_bytes=5 * 1024 * 1024, thumbnail_size=256, text=text
    )
    return {r.name: r for r in out}


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((512, 512), (2048, 2048)),
        ((1024, 576), (3556, 2000)),
        ((1024, 768), (2667, 2000)),
        ((4096, 4096), (4096, 4096)),
    ],
)
def test_print_sizes_meet_the_spec(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert print_size(size) == expected


def test_every_rendition_with_its_size_and_format() -> None:
    out = _render(_image(1024, 576))
    assert set(out) == {"display", "print", "thumbnail"}
    for r in out.values():
        decoded = Image.open(io.BytesIO(r.data))
        assert decoded.size == (r.width, r.height)
        assert decoded.format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[r.format]
    assert (out["display"].width, out["display"].height, out["display"].format) == (
        1024,
        576,
        "jpeg",
    )
    assert len(out["display"].data) < 5 * 1024 * 1024
    assert (out["print"].width, out["print"].height) == (3556, 2000)
    assert Image.open(io.BytesIO(out["print"].data)).info.get("dpi") == pytest.approx((300, 300))
    assert max(out["thumbnail"].width, out["thumbnail"].height) == 256


def test_transparent_images_stay_png() -> None:
    out = _render(_image(256, 256, "RGBA"))
    assert out["display"].format == "png" and out["print"].format == "png"
    assert Image.open(io.BytesIO(out["display"].data)).mode == "RGBA"


def test_page_text_is_set_on_display_and_print() -> None:
    plain = _render(_image(1024, 576))
    texted = _render(_image(1024, 576), text="Mia found a small door behind the roses. " * 3)
    display = Image.open(io.BytesIO(texted["display"].data)).convert("RGB")
    # The band is near-white along the bottom; the top of the picture is untouched.
    bottom = display.crop((0, 560, 1024, 576)).resize((1, 1)).getpixel((0, 0))
    assert isinstance(bottom, tuple) and min(bottom) > 200
    assert texted["display"].data != plain["display"].data
    top_plain = Image.open(io.BytesIO(plain["display"].data)).crop((0, 0, 1024, 100))
    assert display.crop((0, 0, 1024, 100)).tobytes() == top_plain.convert("RGB").tobytes()


def test_unreadable_and_undersized_images_are_refused() -> None:
    with pytest.raises(InvalidImageError):
        _render(b"not an image")
    with pytest.raises(QualityCheckError, match="below 64 px"):
        _render(_image(32, 32))
