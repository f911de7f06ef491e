"""The gateway's style list (schemas.styles) matches the generator's templates exactly."""

from __future__ import annotations

from schemas.styles import STYLE_ALIASES, STYLE_NAMES, known_style
from services.generator.prompts import _ALIASES, STYLES


def test_style_list_matches_generator_templates() -> None:
    assert set(STYLE_NAMES) == set(STYLES)
    assert STYLE_ALIASES == _ALIASES


def test_known_style_normalises_and_refuses_unknown() -> None:
    assert known_style("3D Render") == "3d_render"
    assert known_style("watercolour") == "watercolor"
    assert known_style("vaporwave") is None
