"""Turning a request into self-contained per-image jobs and their dependencies (pure: no I/O).

`plan()` returns every image a request needs, in index order, each with the indexes of
the images it must wait for:

- pack: `image_count` images in varied poses, seeds strided from the character's seed;
- portrait: the portrait(s), preceded by the character's reference set (front, side,
  three expressions) when the caller says none is built yet for its appearance; the
  portrait then depends on all five;
- reference: just the reference set;
- scene: one image of a story page with all its characters;
- story: a portrait per character (phase "portraits"), then `images_per_page` scenes per
  page (phase "scenes"), each depending on the portraits of the characters on its page.

The caller (the scheduler's handlers) fills `reference_keys` of a dependent image from
the stored images it waited for, chooses provider and model from the catalogue (or
passes the catalogue here), and owns all I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from imagegen.errors import PermanentError
from schemas.characters import MAX_SEED, Audience, CharacterSpec, strictest
from schemas.jobs import (
    MAX_SCENE_CHARACTERS,
    CharacterRegion,
    GenerateImage,
    ImageIdentity,
    image_id_for,
)
from schemas.requests import (
    AspectRatio,
    GenerateImages,
    GenerateScene,
    GenerateStory,
    JobKind,
    Quality,
    RegenerateImage,
    StorySpec,
    UserTier,
)
from schemas.topics import Tier
from services.scheduler.catalogue import Catalogue, assign
from services.scheduler.layout import plan_layout
from services.scheduler.poses import (
    PORTRAIT_POSE,
    REFERENCE_POSES,
    photo_prompt,
    pose_for,
    scene_framing,
)
from services.scheduler.scenes import PageScene, SceneFacts, page_scene

Phase = Literal["reference", "portraits", "scenes", "images"]
ReferenceKeysOf = Callable[[CharacterSpec], Sequence[str] | None]
"""The stored keys of a character's reference set for its current appearance, or None
when no complete set is built yet (the caller knows; planning stays pure)."""
PlannableRequest = GenerateImages | GenerateScene | GenerateStory
SceneReadings = Mapping[int, SceneFacts]
"""Page number -> an LLM's reading of that page (pages left out: the extractor reads)."""

# A prime stride keeps per-image seeds of one character far apart yet reproducible.
_SEED_STRIDE = 7919
# Offsets (in strides) that keep the seeds of different image roles of one character apart.
_REFERENCE_SEEDS = 1_000
_PORTRAIT_SEEDS = 2_000
_SCENE_SEEDS = 3_000
REGENERATION_SEEDS = 5_000
VARIATION_STRIDE = 104_729  # another prime, so variations never land on a pack sibling's seed

# The display rendition is the generated image, and displays must be at least 1024 px
# (module spec NFR-003), so every quality draws its long side at 1024; quality picks the model.
_LONG_SIDE: dict[Quality, int] = {Quality.DRAFT: 1024, Quality.STANDARD: 1024, Quality.HIGH: 1024}
_RATIO: dict[AspectRatio, tuple[int, int]] = {
    AspectRatio.WIDE: (16, 9),
    AspectRatio.CLASSIC: (4, 3),
    AspectRatio.SQUARE: (1, 1),
}


@dataclass(frozen=True)
class PlannedImage:
    """One image of a plan: its job, the image indexes it waits for, and its phase."""

    job: GenerateImage
    depends_on: frozenset[int] = frozenset()
    phase: Phase = "images"

    @property
    def index(self) -> int:
        return self.job.image.image_index


def seed_for(base: int, n: int) -> int:
    return (base + n * _SEED_STRIDE) % (MAX_SEED + 1)


def scene_size(aspect: AspectRatio, quality: Quality) -> tuple[int, int]:
    """Width and height of a scene: the long side by quality, the short side to the ratio,
    both multiples of 8 (what latent diffusion models need): 16:9 high is 1024x576."""
    long_side = _LONG_SIDE[quality]
    a, b = _RATIO[aspect]
    short = round(long_side * b / a / 8) * 8
    return long_side, short


def portrait_size(quality: Quality) -> tuple[int, int]:
    side = _LONG_SIDE[quality]
    return side, side


def tier_for(request: PlannableRequest | RegenerateImage) -> Tier:
    """Paid interactive work is realtime, a paid story's batch is standard, free is economy."""
    if request.tier is UserTier.FREE:
        return Tier.ECONOMY
    return Tier.STANDARD if isinstance(request, GenerateStory) else Tier.REALTIME


def audience_of(request: PlannableRequest) -> Audience:
    """Who every image of the job is for: the strictest of the job's own setting and its
    characters' (a character's audience is its jobs' default; a job can only tighten it)."""
    if isinstance(request, GenerateImages):
        cast = [request.character]
    elif isinstance(request, GenerateScene):
        cast = list(request.characters)
    else:
        cast = list(request.story.characters)
    return strictest(request.audience, *(character.audience for character in cast))


def _no_reference_set(_character: CharacterSpec) -> Sequence[str] | None:
    return None


@dataclass(frozen=True)
class _Common:
    job_id: str
    user_id: str
    tier: Tier
    style: str
    quality: Quality
    model: str | None
    steps: int
    guidance: float
    audience: Audience = "general"


@dataclass(frozen=True)
class _Draft:
    """An image before the job's image count is known."""

    character: CharacterSpec
    kind: JobKind
    phase: Phase
    pose: str
    seed: int
    width: int
    height: int
    depends_on: frozenset[int] = frozenset()
    max_variations: int = 0
    reference_keys: tuple[str, ...] = ()
    others: tuple[CharacterSpec, ...] = ()
    layout: tuple[CharacterRegion, ...] = ()
    scene_description: str = ""
    scene_source: str = ""
    overlay_text: str | None = None
    story_id: str | None = None
    page_number: int | None = None
    negative_prompt: str = ""


def _build(common: _Common, drafts: list[_Draft]) -> list[PlannedImage]:
    count = len(drafts)
    return [
        PlannedImage(
            job=GenerateImage(
                image=ImageIdentity(
                    job_id=common.job_id,
                    image_id=image_id_for(common.job_id, index),
                    image_index=index,
                    image_count=count,
                    user_id=common.user_id,
                    character_id=d.character.id,
                    kind=d.kind,
                    story_id=d.story_id,
                    page_number=d.page_number,
                    audience=common.audience,
                ),
                tier=common.tier,
                character=d.character,
                characters=list(d.others),
                layout=list(d.layout),
                prompt="",
                negative_prompt=d.negative_prompt,
                pose=d.pose,
                seed=d.seed,
                style=common.style,
                width=d.width,
                height=d.height,
                steps=common.steps,
                guidance=common.guidance,
                model=common.model,
                quality=common.quality,
                reference_keys=list(d.reference_keys),
                scene_description=d.scene_description,
                scene_source=d.scene_source,
                overlay_text=d.overlay_text,
                max_variations=d.max_variations,
            ),
            depends_on=d.depends_on,
            phase=d.phase,
        )
        for index, d in enumerate(drafts)
    ]


def _known_keys(character: CharacterSpec, reference_keys_of: ReferenceKeysOf) -> tuple[str, ...]:
    """Uploaded reference photos first, then the built reference set, without duplicates."""
    keys = [*character.reference_keys, *(reference_keys_of(character) or ())]
    return tuple(dict.fromkeys(keys))


def _reference_set(
    character: CharacterSpec, width: int, height: int, *, story_id: str | None = None
) -> list[_Draft]:
    return [
        _Draft(
            character=character,
            kind=JobKind.REFERENCE,
            phase="reference",
            pose=pose,
            seed=seed_for(character.seed, _REFERENCE_SEEDS + k),
            width=width,
            height=height,
            # Reference images are what consistency is scored against: never re-rolled.
            max_variations=0,
            reference_keys=tuple(character.reference_keys),
            story_id=story_id,
        )
        for k, pose in enumerate(REFERENCE_POSES)
    ]


def _plan_images(
    request: GenerateImages, max_variations: int, reference_keys_of: ReferenceKeysOf
) -> list[_Draft]:
    character = request.character
    if request.kind is JobKind.REFERENCE:
        return _reference_set(character, request.width, request.height, story_id=request.story_id)
    if request.kind is JobKind.PORTRAIT:
        built = reference_keys_of(character)
        references = (
            []
            if built is not None
            else _reference_set(character, request.width, request.height, story_id=request.story_id)
        )
        # The requested portraits come first, so image 0 is the portrait the gateway names
        # in its 202; the reference set they wait for follows.
        waits = frozenset(range(request.image_count, request.image_count + len(references)))
        keys = _known_keys(character, reference_keys_of)
        portraits = [
            _Draft(
                character=character,
                kind=JobKind.PORTRAIT,
                phase="portraits",
                pose=PORTRAIT_POSE if i == 0 else pose_for(i),
                seed=seed_for(character.seed, _PORTRAIT_SEEDS + i),
                width=request.width,
                height=request.height,
                depends_on=waits,
                max_variations=max_variations,
                reference_keys=keys,
                story_id=request.story_id,
            )
            for i in range(request.image_count)
        ]
        return portraits + references
    if request.kind is JobKind.PROMPT:
        return _plan_prompt(request)
    if request.kind is not JobKind.PACK:
        raise PermanentError(f"kind: {request.kind.value!r} is not an image-set kind")
    keys = _known_keys(character, reference_keys_of)
    group = request.photo_group
    return [
        _Draft(
            character=character,
            kind=JobKind.PACK,
            phase="images",
            pose=pose_for(i) if group is None else photo_prompt(group.value, i),
            seed=seed_for(character.seed, i),
            width=request.width,
            height=request.height,
            max_variations=max_variations,
            reference_keys=keys,
            story_id=request.story_id,
        )
        for i in range(request.image_count)
    ]


def _plan_prompt(request: GenerateImages) -> list[_Draft]:
    """A prompt-only job: the prompt is the scene; no identity, no reference images."""
    return [
        _Draft(
            character=request.character,
            kind=JobKind.PROMPT,
            phase="images",
            pose="",
            seed=seed_for(request.character.seed, i),
            width=request.width,
            height=request.height,
            scene_description=_clip(request.prompt, 2000),
            scene_source="request",
            negative_prompt=request.negative_prompt,
        )
        for i in range(request.image_count)
    ]


def _clip(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0]
    return cut[:limit]


def _scene(
    scene: PageScene,
    *,
    story_id: str,
    page_number: int,
    page_text: str,
    include_text: bool,
    size: tuple[int, int],
    shot: int,
    depends_on: frozenset[int],
    max_variations: int,
    reference_keys_of: ReferenceKeysOf,
) -> _Draft:
    characters = scene.characters
    main, others = characters[0], tuple(characters[1:])
    own_keys = [_known_keys(c, reference_keys_of) for c in characters]
    keys = tuple(dict.fromkeys(k for character_keys in own_keys for k in character_keys))
    # Each character's references condition only its own region of the picture.
    layout = plan_layout(characters, size[0], size[1], own_keys)
    return _Draft(
        character=main,
        kind=JobKind.SCENE,
        phase="scenes",
        pose=scene_framing(shot),
        seed=seed_for(main.seed, _SCENE_SEEDS + page_number * 8 + shot),
        width=size[0],
        height=size[1],
        depends_on=depends_on,
        max_variations=max_variations,
        reference_keys=keys,
        others=others,
        layout=tuple(layout),
        scene_description=_clip(scene.description, 2000),
        scene_source=scene.source,
        overlay_text=(page_text.strip() or None) if include_text else None,
        story_id=story_id,
        page_number=page_number,
    )


def _plan_scene(
    request: GenerateScene,
    max_variations: int,
    reference_keys_of: ReferenceKeysOf,
    readings: SceneReadings,
) -> list[_Draft]:
    # The caller chose these characters: the page text describes them, never drops one.
    scene = page_scene(
        description=request.scene_description,
        text=request.page_text,
        candidates=request.characters,
        derived=readings.get(request.page_number),
    )
    return [
        _scene(
            scene,
            story_id=request.story_id,
            page_number=request.page_number,
            page_text=request.page_text,
            include_text=request.include_text,
            size=scene_size(request.aspect_ratio, request.quality),
            shot=0,
            depends_on=frozenset(),
            max_variations=max_variations,
            reference_keys_of=reference_keys_of,
        )
    ]


def validate_story(story: StorySpec) -> None:
    """Raise PermanentError naming the page (or character) at fault."""
    ids = [c.id for c in story.characters]
    duplicated = {i for i in ids if ids.count(i) > 1}
    if duplicated:
        raise PermanentError(f"story.characters: duplicate id {sorted(duplicated)[0]!r}")
    seen: set[int] = set()
    for page in story.pages:
        if page.page_number in seen:
            raise PermanentError(f"story.pages: page {page.page_number} appears twice")
        seen.add(page.page_number)
        unknown = [c for c in page.character_ids if c not in ids]
        if unknown:
            raise PermanentError(
                f"story.pages[page {page.page_number}].character_ids: "
                f"{unknown[0]!r} is not a character of the story"
            )
        if len(set(page.character_ids)) > MAX_SCENE_CHARACTERS:
            raise _crowded(page.page_number)


def _crowded(page_number: int) -> PermanentError:
    return PermanentError(
        f"story.pages[page {page_number}].character_ids: at most "
        f"{MAX_SCENE_CHARACTERS} characters in one scene (name them for this page)"
    )


def _plan_story(
    request: GenerateStory,
    max_variations: int,
    reference_keys_of: ReferenceKeysOf,
    readings: SceneReadings,
) -> list[_Draft]:
    story = request.story
    validate_story(story)
    if not (request.include_character_portraits or request.include_scene_images):
        raise PermanentError("include_scene_images: a story needs portraits or scenes (or both)")
    drafts: list[_Draft] = []
    portrait_of: dict[str, int] = {}
    if request.include_character_portraits:
        width, height = portrait_size(request.quality)
        for character in story.characters:
            portrait_of[character.id] = len(drafts)
            drafts.append(
                _Draft(
                    character=character,
                    kind=JobKind.PORTRAIT,
                    phase="portraits",
                    pose=PORTRAIT_POSE,
                    seed=seed_for(character.seed, _PORTRAIT_SEEDS),
                    width=width,
                    height=height,
                    max_variations=max_variations,
                    reference_keys=_known_keys(character, reference_keys_of),
                    story_id=story.id,
                )
            )
    if request.include_scene_images:
        by_id = {c.id: c for c in story.characters}
        size = scene_size(request.aspect_ratio, request.quality)
        for page in sorted(story.pages, key=lambda p: p.page_number):
            listed = list(dict.fromkeys(page.character_ids))
            # A page that lists no one shows the characters its text names (all if none).
            scene = page_scene(
                description=page.scene_description or "",
                text=page.text,
                candidates=[by_id[i] for i in listed] if listed else story.characters,
                derived=readings.get(page.page_number),
                narrow=not listed,
            )
            # A page that lists no one may still show too many: those its text names.
            if len(scene.characters) > MAX_SCENE_CHARACTERS:
                raise _crowded(page.page_number)
            waits = frozenset(portrait_of[c.id] for c in scene.characters if c.id in portrait_of)
            for shot in range(request.images_per_page):
                drafts.append(
                    _scene(
                        scene,
                        story_id=story.id,
                        page_number=page.page_number,
                        page_text=page.text,
                        include_text=request.include_text,
                        size=size,
                        shot=shot,
                        depends_on=waits,
                        max_variations=max_variations,
                        reference_keys_of=reference_keys_of,
                    )
                )
    return drafts


def plan(
    request: PlannableRequest,
    *,
    steps: int,
    guidance: float,
    max_variations: int = 0,
    reference_keys_of: ReferenceKeysOf | None = None,
    catalogue: Catalogue | None = None,
    scenes: SceneReadings | None = None,
) -> list[PlannedImage]:
    """Every image `request` needs, in index order, with dependencies and phases.

    `reference_keys_of` tells whether a character's reference set is built (None: none is).
    With `catalogue`, each job gets the first offer of its chain (provider, model and
    estimated cost); a request nothing in the catalogue meets raises `NoOfferError`
    before anything is planned. `scenes` holds an LLM's readings of pages without a scene
    description; other such pages are read by the deterministic extractor (`scenes.py`).
    Raises PermanentError for a request that cannot work.
    """
    keys_of = reference_keys_of or _no_reference_set
    readings = scenes or {}
    if isinstance(request, GenerateImages):
        drafts = _plan_images(request, max_variations, keys_of)
        style = request.style
    elif isinstance(request, GenerateScene):
        drafts = _plan_scene(request, max_variations, keys_of, readings)
        style = request.style
    else:
        drafts = _plan_story(request, max_variations, keys_of, readings)
        style = request.style
    common = _Common(
        job_id=request.job_id,
        user_id=request.user_id,
        tier=tier_for(request),
        style=style,
        quality=request.quality,
        model=request.model,
        steps=steps,
        guidance=guidance,
        audience=audience_of(request),
    )
    planned = _build(common, drafts)
    if catalogue is None:
        return planned
    chosen = []
    for p in planned:
        job = p.job
        offers = catalogue.chain(
            job.quality, request.model, width=job.width, height=job.height, steps=job.steps
        )
        chosen.append(
            PlannedImage(job=assign(job, offers[0]), depends_on=p.depends_on, phase=p.phase)
        )
    return chosen


def expand(request: GenerateImages, *, steps: int, guidance: float) -> list[GenerateImage]:
    """The jobs of an image set, ignoring dependencies (kept for the first handlers)."""
    return [p.job for p in plan(request, steps=steps, guidance=guidance)]
