"""Page text set on a scene: wrapped, on a translucent band along the bottom edge.

The font is Pillow's bundled scalable one, so no system font is needed; its size follows
the image width so the text reads the same on display and print renditions.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

MAX_BAND_SHARE = 0.4
"""The band never covers more than this share of the image; the font shrinks to fit."""


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if draw.textlength(candidate, font=font) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def overlay_text(image: Image.Image, text: str) -> Image.Image:
    base = image.convert("RGBA")
    width, height = base.size
    margin = max(8, width // 40)
    size = max(12, width // 28)
    draw = ImageDraw.Draw(base)
    while True:
        font = ImageFont.load_default(size=size)
        lines = _wrap(draw, text, font, width - 2 * margin)
        line_height = int(size * 1.3)
        band = line_height * len(lines) + 2 * margin
        if band <= height * MAX_BAND_SHARE or size <= 10:
            break
        size = int(size * 0.85)
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    layer_draw = ImageDraw.Draw(layer)
    top = height - band
    layer_draw.rectangle((0, top, width, height), fill=(255, 255, 255, 215))
    for i, line in enumerate(lines):
        layer_draw.text(
            (margin, top + margin + i * line_height), line, font=font, fill=(20, 20, 20, 255)
        )
    combined = Image.alpha_composite(base, layer)
    return combined if "A" in image.getbands() else combined.convert("RGB")
