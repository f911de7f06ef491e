"""The scheduler's layout of a multi-character scene: one region per character, each with
that character's own references (and, at dispatch, its own portrait)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imagegen.errors import PermanentError
from schemas.characters import CharacterSpec
from schemas.jobs import CharacterRegion
from schemas.requests import (
    AspectRatio,
    GenerateScene,
    GenerateStory,
    Quality,
    StoryPage,
    StorySpec,
    UserTier,
)
from services.scheduler.dispatch import with_dependency_keys
from services.scheduler.expansion import plan
from services.scheduler.layout import grid_for, plan_layout

CAST = [
    CharacterSpec(id=f"c{i}", name=f"C{i}", seed=i, reference_keys=[f"uploads/c{i}.png"])
    for i in range(5)
]


def _boxes(regions: list[CharacterRegion]) -> list[tuple[float, float, float, float]]:
    return [(r.x0, r.y0, r.x1, r.y1) for r in regions]


@pytest.mark.parametrize(
    ("count", "width", "height", "grid"),
    [
        (2, 1024, 576, (2, 1)),  # 16:9: side by side
        (3, 1024, 768, (3, 1)),  # 4:3: three columns
        (4, 1024, 576, (4, 1)),  # 16:9: four columns still hold a person each
        (4, 1024, 1024, (2, 2)),  # square: a 2 x 2 grid
        (2, 576, 1024, (1, 2)),  # a tall page stacks them
    ],
)
def test_the_grid_follows_the_cast_and_the_aspect_ratio(
    count: int, width: int, height: int, grid: tuple[int, int]
) -> None:
    assert grid_for(count, width, height) == grid


def test_regions_tile_the_image_in_cast_order_with_each_characters_own_keys() -> None:
    keys = [[f"k{i}a", f"k{i}b"] for i in range(3)]
    regions = plan_layout(CAST[:3], 1024, 1024, keys)
    # Square, three characters: two on top, the third across the whole bottom row.
    assert _boxes(regions) == [(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 1, 1)]
    assert [r.character_id for r in regions] == ["c0", "c1", "c2"]
    assert [r.reference_keys for r in regions] == keys
    area = sum((r.x1 - r.x0) * (r.y1 - r.y0) for r in regions)
    assert area == pytest.approx(1.0)  # no gap, no overlap
    assert plan_layout(CAST[:1], 1024, 576, [["k"]]) == []  # one character fills the image
    with pytest.raises(PermanentError, match="at most 4 characters"):
        plan_layout(CAST, 1024, 576, [[]] * 5)


def _scene(characters: list[CharacterSpec]) -> GenerateScene:
    return GenerateScene(
        job_id="scene-1",
        user_id="u1",
        tier=UserTier.PAID,
        story_id="story-1",
        page_number=2,
        characters=characters,
        page_text="C0 and C1 walk to school.",
        aspect_ratio=AspectRatio.WIDE,
        quality=Quality.HIGH,
    )


def test_a_scene_plan_carries_the_layout_with_uploads_and_built_sets_per_character() -> None:
    built = {"c1": ["sets/c1/front.png"]}
    (scene,) = plan(
        _scene(CAST[:2]), steps=20, guidance=7.0, reference_keys_of=lambda c: built.get(c.id)
    )
    job = scene.job
    assert [(r.character_id, r.reference_keys) for r in job.layout] == [
        ("c0", ["uploads/c0.png"]),
        ("c1", ["uploads/c1.png", "sets/c1/front.png"]),
    ]
    assert _boxes(job.layout) == [(0, 0, 0.5, 1), (0.5, 0, 1, 1)]
    # The flat list stays the union (what identity scoring and the record name).
    assert job.reference_keys == ["uploads/c0.png", "uploads/c1.png", "sets/c1/front.png"]
    with pytest.raises(PermanentError, match="at most 4"):
        plan(_scene(CAST), steps=20, guidance=7.0)


def test_a_portrait_the_scene_waited_for_conditions_only_its_own_characters_region() -> None:
    (scene,) = plan(_scene(CAST[:2]), steps=20, guidance=7.0)

    def portrait_of(character_id: str) -> dict[str, Any]:
        return {"message": json.dumps({"image": {"character_id": character_id}})}

    stored = [(portrait_of("c1"), "portraits/c1.png"), (portrait_of("c0"), "portraits/c0.png")]
    regions = with_dependency_keys(scene.job, stored)
    assert [r.reference_keys for r in regions] == [
        ["uploads/c0.png", "portraits/c0.png"],
        ["uploads/c1.png", "portraits/c1.png"],
    ]


def test_a_big_cast_story_draws_the_characters_each_page_names() -> None:
    crowd = [CharacterSpec(id=f"c{i}", name=f"Kid{i}", seed=i) for i in range(6)]
    pages = [StoryPage(page_number=1, text="Kid1 and Kid4 build a raft.")]
    story = StorySpec(id="s", title="Six", pages=pages, characters=crowd)
    request = GenerateStory(
        job_id="j", user_id="u", tier=UserTier.PAID, story=story, include_character_portraits=False
    )
    (scene,) = plan(request, steps=20, guidance=7.0)
    assert [r.character_id for r in scene.job.layout] == ["c1", "c4"]
