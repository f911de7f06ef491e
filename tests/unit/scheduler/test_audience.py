"""Every planned image carries its job's audience: the strictest of the request's own and
its characters' (postprocess holds "children" images to the stricter safety threshold)."""

from __future__ import annotations

from schemas.characters import CharacterSpec, strictest
from schemas.requests import (
    GenerateImages,
    GenerateScene,
    GenerateStory,
    ImageModifications,
    JobKind,
    RegenerateImage,
    StoryPage,
    StorySpec,
    UserTier,
)
from services.scheduler.expansion import plan
from services.scheduler.rerolls import regenerate

GRANDMA = CharacterSpec(id="grandma", name="Grandma", seed=3)
MIA = CharacterSpec(id="mia", name="Mia", seed=5, audience="children")
_COMMON = {"job_id": "job-1", "user_id": "u1", "tier": UserTier.PAID}


def _audiences(request: GenerateImages | GenerateScene | GenerateStory) -> set[str]:
    return {p.job.image.audience for p in plan(request, steps=4, guidance=5.0)}


def test_strictest_prefers_children_and_defaults_to_general() -> None:
    assert strictest() == "general"
    assert strictest(None, "general") == "general"
    assert strictest("general", None, "children", "general") == "children"


def test_a_pack_takes_its_characters_audience_or_the_jobs_stricter_one() -> None:
    pack = GenerateImages(**_COMMON, character=GRANDMA, image_count=3)
    assert _audiences(pack) == {"general"}
    assert _audiences(pack.model_copy(update={"audience": "children"})) == {"children"}
    young = GenerateImages(**_COMMON, character=MIA, image_count=3, kind=JobKind.PORTRAIT)
    assert _audiences(young) == {"children"}  # the reference set's images too
    # The gateway refuses a looser job; were one to arrive, the character still holds.
    assert _audiences(young.model_copy(update={"audience": "general"})) == {"children"}


def test_a_scene_or_story_with_one_childrens_character_is_for_children() -> None:
    scene = GenerateScene(**_COMMON, story_id="s", page_number=1, characters=[GRANDMA, MIA])
    assert _audiences(scene) == {"children"}
    story = GenerateStory(
        **_COMMON,
        story=StorySpec(
            id="s",
            title="Baking day",
            pages=[StoryPage(page_number=1, text="Grandma bakes.", character_ids=["grandma"])],
            characters=[GRANDMA, MIA],
        ),
    )
    assert _audiences(story) == {"children"}  # Grandma's portrait and her page included


def test_a_regeneration_keeps_the_originals_audience() -> None:
    pack = GenerateImages(**_COMMON, character=GRANDMA, image_count=1, audience="children")
    original = plan(pack, steps=4, guidance=5.0)[0].job
    again = regenerate(
        original,
        RegenerateImage(
            job_id="job-2",
            user_id="u1",
            tier=UserTier.PAID,
            image_id=original.image.image_id,
            version=2,
            modifications=ImageModifications(),
        ),
    )
    assert again.image.audience == "children"
