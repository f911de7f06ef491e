"""The art styles the generator has templates for: pure data, shared by gateway and generator.

The gateway validates requests against this list (it may not import the generator); the
generator's templates must cover every name here (a test checks it).
"""

from __future__ import annotations

import re

STYLE_NAMES: tuple[str, ...] = (
    "standard",
    "cartoon",
    "watercolor",
    "realistic",
    "painterly",
    "anime",
    "storybook",
    "3d_render",
    "line_art",
    "flat_logo",
    "abstract",
    "minimalist",
    "vintage",
    "grunge",
)

STYLE_ALIASES: dict[str, str] = {
    "watercolour": "watercolor",
    "3d": "3d_render",
    "lineart": "line_art",
}


def normalise_style(style: str) -> str:
    """`"3D Render"`, `"line-art"` and `"3d_render"` all name one style."""
    key = re.sub(r"[\s\-]+", "_", style.strip().lower())
    return STYLE_ALIASES.get(key, key)


def known_style(style: str) -> str | None:
    """The canonical name of `style`, or None when no template exists for it."""
    name = normalise_style(style)
    return name if name in STYLE_NAMES else None
