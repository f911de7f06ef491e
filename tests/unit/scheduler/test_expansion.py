"""Planning: requests become per-image jobs with dependencies, phases, sizes and seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from imagegen.errors import NotFoundError, PermanentError
from schemas.characters import MAX_SEED, CharacterSpec
from schemas.jobs import GenerateImage, image_id_for
from schemas.requests import (
    MAX_PACK_SIZE,
    AspectRatio,
    GenerateImages,
    GenerateScene,
    GenerateStory,
    ImageModifications,
    JobKind,
    Quality,
    RegenerateImage,
    StoryPage,
    StorySpec,
    UserTier,
)
from schemas.topics import Tier
from services.scheduler.catalogue import Catalogue, NoOfferError
from services.scheduler.expansion import (
    PlannedImage,
    expand,
    plan,
    scene_size,
)
from services.scheduler.poses import PACK_POSES, REFERENCE_POSES
from services.scheduler.rerolls import regenerate, vary

ANN = CharacterSpec(id="ann", name="Ann", seed=42, reference_keys=["uploads/ann.png"])
BOB = CharacterSpec(id="bob", name="Bob", seed=MAX_SEED - 3)
CAT = CharacterSpec(id="cat", name="Cat", seed=7)


def _images(kind: JobKind = JobKind.PACK, count: int = 5, **extra: Any) -> GenerateImages:
    fields: dict[str, Any] = {
        "job_id": "job-1",
        "user_id": "u1",
        "tier": UserTier.PAID,
        "kind": kind,
        "character": ANN,
        "image_count": count,
    }
    return GenerateImages(**(fields | extra))


def _plan(request: Any, **extra: Any) -> list[PlannedImage]:
    return plan(request, steps=20, guidance=7.0, **extra)


def _built(keys: dict[str, list[str]]) -> Any:
    def reference_keys_of(character: CharacterSpec) -> Sequence[str] | None:
        return keys.get(character.id)

    return reference_keys_of


# --- packs ----------------------------------------------------------------------------


def test_pack_of_23_has_distinct_poses_and_seeds_and_stable_ids() -> None:
    planned = _plan(_images(count=MAX_PACK_SIZE), max_variations=2)
    jobs = [p.job for p in planned]
    assert [j.image.image_index for j in jobs] == list(range(MAX_PACK_SIZE))
    assert [j.image.image_id for j in jobs] == [image_id_for("job-1", i) for i in range(23)]
    assert len({j.pose for j in jobs}) == 23
    assert len({j.seed for j in jobs}) == 23
    # Seeds as the first scheduler strided them: a redelivered request plans identically.
    assert [j.seed for j in jobs] == [42 + i * 7919 for i in range(23)]
    assert {j.image.image_count for j in jobs} == {23}
    assert {j.image.kind for j in jobs} == {JobKind.PACK}
    assert {p.phase for p in planned} == {"images"}
    assert all(not p.depends_on for p in planned)
    assert {j.tier for j in jobs} == {Tier.REALTIME}
    assert {j.max_variations for j in jobs} == {2}
    assert {j.quality for j in jobs} == {Quality.STANDARD}
    assert jobs[0].reference_keys == ["uploads/ann.png"]


def test_pack_poses_vary_framing_and_expression() -> None:
    # Each of the 23 differs; profile, full-body and several expressions are all there.
    text = " | ".join(PACK_POSES)
    for word in ("profile", "full body", "smile", "laughing", "surprised", "sad", "waist-up"):
        assert word in text
    assert len(set(PACK_POSES)) == len(PACK_POSES) == MAX_PACK_SIZE


def test_free_user_work_goes_to_economy_and_plans_are_deterministic() -> None:
    request = _images(count=3, tier=UserTier.FREE)
    first, second = _plan(request), _plan(request)
    assert {p.job.tier for p in first} == {Tier.ECONOMY}

    def stable(jobs: list[PlannedImage]) -> list[dict[str, Any]]:
        return [p.job.model_dump(exclude={"enqueued_at"}) for p in jobs]

    assert stable(first) == stable(second)
    assert [j.image.image_id for j in expand(request, steps=20, guidance=7.0)] == [
        p.job.image.image_id for p in first
    ]


# --- portraits and reference sets -------------------------------------------------------


def test_portrait_without_a_reference_set_builds_it_first() -> None:
    planned = _plan(_images(JobKind.PORTRAIT, count=1), max_variations=2)
    # The portrait is image 0 (the id the gateway hands out); its reference set follows.
    assert [p.phase for p in planned] == ["portraits"] + ["reference"] * 5
    portrait, refs = planned[0], planned[1:]
    assert [p.job.image.kind for p in refs] == [JobKind.REFERENCE] * 5
    assert [p.job.pose for p in refs] == list(REFERENCE_POSES)
    assert all(not p.depends_on for p in refs)
    assert {p.job.max_variations for p in refs} == {0}  # identity images are not re-rolled
    assert portrait.depends_on == frozenset(range(1, 6))
    assert portrait.job.image.kind is JobKind.PORTRAIT
    assert portrait.job.image.image_index == 0
    assert portrait.job.max_variations == 2
    assert {p.job.image.image_count for p in planned} == {6}
    assert len({p.job.seed for p in planned}) == 6


def test_portrait_with_a_built_reference_set_uses_its_keys() -> None:
    keys = {"ann": ["refs/ann/front.png", "refs/ann/side.png"]}
    planned = _plan(_images(JobKind.PORTRAIT, count=1), reference_keys_of=_built(keys))
    (portrait,) = planned
    assert portrait.phase == "portraits"
    assert portrait.depends_on == frozenset()
    assert portrait.job.reference_keys == ["uploads/ann.png", *keys["ann"]]
    assert portrait.job.image.image_count == 1


def test_reference_request_is_just_the_reference_set() -> None:
    planned = _plan(_images(JobKind.REFERENCE, count=1))
    assert [p.job.image.kind for p in planned] == [JobKind.REFERENCE] * 5
    assert {p.phase for p in planned} == {"reference"}


@pytest.mark.parametrize("kind", [JobKind.SCENE, JobKind.STORY, JobKind.REGENERATE])
def test_image_set_request_of_another_kind_is_refused_naming_the_field(kind: JobKind) -> None:
    with pytest.raises(PermanentError, match=f"kind: '{kind.value}'"):
        _plan(_images(kind, count=1))


# --- scenes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("aspect", "quality", "size"),
    [
        # Displays are at least 1024 px on the long side at every quality (NFR-003).
        (AspectRatio.WIDE, Quality.HIGH, (1024, 576)),
        (AspectRatio.WIDE, Quality.STANDARD, (1024, 576)),
        (AspectRatio.WIDE, Quality.DRAFT, (1024, 576)),
        (AspectRatio.CLASSIC, Quality.HIGH, (1024, 768)),
        (AspectRatio.CLASSIC, Quality.STANDARD, (1024, 768)),
        (AspectRatio.SQUARE, Quality.STANDARD, (1024, 1024)),
        (AspectRatio.SQUARE, Quality.DRAFT, (1024, 1024)),
    ],
)
def test_scene_size_per_aspect_ratio_and_quality(
    aspect: AspectRatio, quality: Quality, size: tuple[int, int]
) -> None:
    assert scene_size(aspect, quality) == size
    assert size[0] % 8 == 0 and size[1] % 8 == 0


def test_scene_has_every_character_its_text_and_page() -> None:
    request = GenerateScene(
        job_id="scene-1",
        user_id="u1",
        tier=UserTier.PAID,
        story_id="story-1",
        page_number=3,
        characters=[ANN, BOB],
        page_text="Ann and Bob  find a   dragon egg.",
        include_text=True,
        aspect_ratio=AspectRatio.CLASSIC,
        quality=Quality.HIGH,
    )
    (scene,) = _plan(request)
    job = scene.job
    assert (job.width, job.height) == (1024, 768)
    assert job.character == ANN and job.characters == [BOB]
    assert job.scene_description == "Ann and Bob find a dragon egg."  # page text stands in
    assert job.overlay_text == "Ann and Bob  find a   dragon egg."
    assert (job.image.story_id, job.image.page_number, job.image.kind) == (
        "story-1",
        3,
        JobKind.SCENE,
    )
    assert job.tier is Tier.REALTIME
    assert scene.phase == "scenes"
    without_text = _plan(
        request.model_copy(update={"include_text": False, "scene_description": "x"})
    )
    assert without_text[0].job.overlay_text is None
    assert without_text[0].job.scene_description == "x"


# --- stories ----------------------------------------------------------------------------


def _story(pages: list[StoryPage], **extra: Any) -> GenerateStory:
    spec = StorySpec(id="story-1", title="Eggs", pages=pages, characters=[ANN, BOB, CAT])
    fields: dict[str, Any] = {"job_id": "story-job", "user_id": "u1", "tier": "paid", "story": spec}
    return GenerateStory(**(fields | extra))


PAGES = [
    StoryPage(page_number=2, text="Bob alone.", character_ids=["bob"]),
    StoryPage(page_number=1, text="Ann meets Cat.", character_ids=["ann", "cat"]),
    StoryPage(page_number=3, text="Everyone.", scene_description="a picnic"),
]


def test_story_is_portraits_then_scenes_that_wait_for_their_characters() -> None:
    planned = _plan(_story(PAGES, images_per_page=2, include_text=True), max_variations=1)
    assert [p.phase for p in planned] == ["portraits"] * 3 + ["scenes"] * 6
    portraits = {p.job.character.id: p.index for p in planned[:3]}
    assert portraits == {"ann": 0, "bob": 1, "cat": 2}
    scenes = planned[3:]
    # Pages in order, two images each, each waiting only for the portraits on its page.
    assert [p.job.image.page_number for p in scenes] == [1, 1, 2, 2, 3, 3]
    assert [set(p.depends_on) for p in scenes] == [{0, 2}, {0, 2}, {1}, {1}, {0, 1, 2}, {0, 1, 2}]
    assert [p.job.character.id for p in scenes] == ["ann", "ann", "bob", "bob", "ann", "ann"]
    assert [c.id for c in scenes[4].job.characters] == ["bob", "cat"]
    assert scenes[0].job.pose != scenes[1].job.pose and scenes[0].job.seed != scenes[1].job.seed
    assert scenes[4].job.scene_description == "a picnic"
    assert scenes[4].job.overlay_text == "Everyone."
    assert {p.job.image.story_id for p in planned} == {"story-1"}
    assert {p.job.image.image_count for p in planned} == {9}
    assert {p.job.tier for p in planned} == {Tier.STANDARD}  # a paid batch
    # Every dependency points at an earlier image: the graph has no cycles.
    assert all(d < p.index for p in planned for d in p.depends_on)


def test_story_without_portraits_or_scenes() -> None:
    scenes_only = _plan(_story(PAGES, include_character_portraits=False, tier="free"))
    assert [p.phase for p in scenes_only] == ["scenes"] * 3
    assert all(not p.depends_on for p in scenes_only)
    assert {p.job.tier for p in scenes_only} == {Tier.ECONOMY}
    portraits_only = _plan(_story(PAGES, include_scene_images=False))
    assert [p.job.image.kind for p in portraits_only] == [JobKind.PORTRAIT] * 3
    with pytest.raises(PermanentError, match="portraits or scenes"):
        _plan(_story(PAGES, include_scene_images=False, include_character_portraits=False))


@pytest.mark.parametrize(
    ("pages", "match"),
    [
        ([StoryPage(page_number=4, character_ids=["ann", "zed"])], r"page 4.*'zed'"),
        (
            [StoryPage(page_number=1), StoryPage(page_number=1, text="again")],
            "page 1 appears twice",
        ),
    ],
)
def test_story_pages_are_validated_naming_the_page(pages: list[StoryPage], match: str) -> None:
    with pytest.raises(PermanentError, match=match):
        _plan(_story(pages))


def test_a_page_with_more_characters_than_a_scene_holds_is_refused() -> None:
    crowd = [CharacterSpec(id=f"c{i}", name=f"C{i}", seed=i) for i in range(6)]
    spec = StorySpec(id="s", title="Crowd", pages=[StoryPage(page_number=7)], characters=crowd)
    request = GenerateStory(job_id="j", user_id="u", tier=UserTier.PAID, story=spec)
    with pytest.raises(PermanentError, match=r"page 7.*at most 4"):
        _plan(request)


# --- provider choice --------------------------------------------------------------------


def test_with_a_catalogue_each_job_gets_the_cheapest_offer() -> None:
    planned = _plan(_images(count=2), catalogue=Catalogue.default())
    assert {(p.job.provider, p.job.model) for p in planned} == {
        ("diffusers", "stable-diffusion-v1-5")
    }
    assert all(p.job.estimated_cost_usd > 0 for p in planned)
    pinned = _plan(_images(count=1, model="gpt-image-1"), catalogue=Catalogue.default())
    assert (pinned[0].job.provider, pinned[0].job.estimated_cost_usd) == ("openai", 0.167)
    with pytest.raises(NoOfferError, match="'nope'"):
        _plan(_images(count=1, model="nope"), catalogue=Catalogue.default())


# --- regeneration and variations --------------------------------------------------------


def _original() -> GenerateImage:
    job = _plan(_images(count=3), max_variations=2)[1].job
    return job.model_copy(update={"extra_prompt": "in a garden", "provider": "demo"})


def _regen(**extra: Any) -> RegenerateImage:
    fields: dict[str, Any] = {
        "job_id": "regen-1",
        "user_id": "u1",
        "tier": "paid",
        "image_id": image_id_for("job-1", 1),
        "version": 2,
    }
    return RegenerateImage(**(fields | extra))


def test_regenerate_keeps_the_image_and_applies_modifications() -> None:
    original = _original()
    mods = ImageModifications(style="watercolor", prompt="wearing a red hat", seed=99)
    job = regenerate(original, _regen(modifications=mods, version=3))
    assert job.image.image_id == original.image.image_id
    assert (job.image.job_id, job.image.image_index, job.image.image_count) == ("regen-1", 0, 1)
    assert (job.image.version, job.image.attempt, job.image.variation) == (3, 1, 0)
    assert job.image.kind is JobKind.PACK  # still the pack's image, in a new version
    assert job.style == "watercolor"
    assert job.extra_prompt == "in a garden, wearing a red hat"
    assert job.seed == 99
    assert (job.pose, job.character) == (original.pose, original.character)
    assert job.provider is None  # the scheduler chooses again


def test_plain_regeneration_moves_the_seed_deterministically() -> None:
    original = _original()
    v2 = regenerate(original, _regen())
    assert v2.seed != original.seed
    assert v2.seed == regenerate(original, _regen()).seed
    assert regenerate(original, _regen(version=3)).seed not in {v2.seed, original.seed}
    assert (v2.style, v2.extra_prompt) == (original.style, original.extra_prompt)
    assert regenerate(original, _regen(job_id="x"), "other-job").image.job_id == "other-job"


def test_regeneration_refusals() -> None:
    original = _original()
    with pytest.raises(NotFoundError, match="image_id"):
        regenerate(original, _regen(user_id="mallory"))
    with pytest.raises(NotFoundError, match="image_id"):
        regenerate(original, _regen(image_id="other"))
    v3 = original.model_copy(update={"image": original.image.model_copy(update={"version": 3})})
    with pytest.raises(PermanentError, match="version"):
        regenerate(v3, _regen(version=3))
    long = original.model_copy(update={"extra_prompt": "x" * 900})
    with pytest.raises(PermanentError, match=r"modifications\.prompt"):
        regenerate(long, _regen(modifications=ImageModifications(prompt="y" * 200)))


def test_vary_gives_each_variation_its_own_deterministic_seed() -> None:
    job = _original()
    first, second = vary(job, 1), vary(job, 2)
    assert (first.image.variation, second.image.variation) == (1, 2)
    assert len({job.seed, first.seed, second.seed}) == 3
    assert vary(job, 1) == first
    assert vary(first, 2).seed == second.seed  # from whichever variation it is asked
    assert first.image.image_id == job.image.image_id
    retried = job.model_copy(update={"image": job.image.model_copy(update={"attempt": 3})})
    assert vary(retried, 1).image.attempt == 1
    assert job.image.idempotency_key != first.image.idempotency_key
    with pytest.raises(PermanentError, match="variation"):
        vary(job, 3)
    with pytest.raises(PermanentError, match="variation"):
        vary(job, 0)
