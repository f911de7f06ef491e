"""HTTP request and response bodies (camelCase for the v1 resources, as the products use)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from schemas.characters import MAX_SEED, Audience, CharacterAttributes
from schemas.events import JobStatus
from schemas.jobs import MAX_SCENE_CHARACTERS
from schemas.requests import MAX_PACK_SIZE, MAX_STORY_PAGES, PhotoGroup, Quality
from schemas.styles import STYLE_NAMES, known_style
from services.gateway.models_images import JOB_AUDIENCE_DOC, QualityIn
from services.gateway.webhooks.models import WebhookIn

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def check_style(style: str) -> str:
    """The canonical style name; a ValueError (422 naming the field) for an unknown one."""
    name = known_style(style)
    if name is None:
        raise ValueError(f"unknown style {style!r}; known styles: {', '.join(STYLE_NAMES)}")
    return name


ArtStyle = Annotated[
    str,
    Field(min_length=1, max_length=60, examples=["storybook"], description="One of STYLE_NAMES."),
    AfterValidator(check_style),
]
ResourceId = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$", examples=["3f1c9a52-..."])
]
Modifier = Annotated[str, Field(min_length=1, max_length=100)]
AUDIENCE_DOC = (
    'Who the images are for: "general" or "children" (the image-safety check refuses'
    " suggestive images at a lower score)."
)


def check_text(value: Any) -> Any:
    """Refuse text PostgreSQL cannot store (NUL, lone surrogates) with a 422, not a 500."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("may not contain NUL characters")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError("is not valid Unicode text") from exc
    return value


class CleanInput(BaseModel):
    """Request bodies: every string field (and list of strings) passes `check_text`."""

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        return check_text(value)


class Attributes(CharacterAttributes):
    """The contract's attributes, spelled in camelCase; unknown names are refused."""

    model_config = ConfigDict(**_CAMEL, frozen=True, extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        return check_text(value)


class AttributesPatch(CleanInput):
    """Attributes to change: a given key replaces, null clears, an absent key is kept."""

    model_config = ConfigDict(**_CAMEL, extra="forbid")

    age_range: str | None = Field(default=None, max_length=40)
    gender: str | None = Field(default=None, max_length=40)
    ethnicity: str | None = Field(default=None, max_length=60)
    hair_colour: str | None = Field(default=None, max_length=40)
    hair_style: str | None = Field(default=None, max_length=60)
    eye_colour: str | None = Field(default=None, max_length=40)
    body_type: str | None = Field(default=None, max_length=40)
    outfit: str | None = Field(default=None, max_length=200)
    distinctive_features: list[str] | None = Field(default=None, max_length=10)
    personality_traits: list[str] | None = Field(default=None, max_length=10)


_CHARACTER_EXAMPLE: dict[str, Any] = {
    "name": "Mia",
    "description": "A curious eight-year-old explorer with a big laugh",
    "attributes": {
        "ageRange": "8-10",
        "gender": "girl",
        "hairColour": "red",
        "hairStyle": "two braids",
        "eyeColour": "green",
        "outfit": "yellow raincoat and wellies",
        "distinctiveFeatures": ["freckles", "gap-toothed smile"],
        "personalityTraits": ["curious", "brave"],
    },
    "styleModifiers": ["soft light"],
    "artStyle": "storybook",
    "audience": "children",
}


class CharacterCreate(CleanInput):
    model_config = ConfigDict(
        **_CAMEL, extra="forbid", json_schema_extra={"examples": [_CHARACTER_EXAMPLE]}
    )

    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000, description="Free base description.")
    attributes: Attributes = Field(default_factory=Attributes)
    style_modifiers: list[Modifier] = Field(default_factory=list, max_length=10)
    art_style: ArtStyle = "standard"
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Locked seed; random when absent."
    )
    lora_model_url: str | None = Field(
        default=None,
        max_length=2000,
        description="https URL of the character's LoRA weights (safetensors), fetched once"
        " into the object store; or upload the file with PUT .../lora.",
    )
    lora_trigger_word: str | None = Field(
        default=None, max_length=100, description="Words the LoRA answers to (in every prompt)."
    )
    lora_weight: float | None = Field(
        default=None, ge=0.0, le=2.0, description="How strongly the LoRA applies (default 1)."
    )
    audience: Audience = Field(
        default="general", description=AUDIENCE_DOC + " The default for its jobs."
    )


class CharacterUpdate(CleanInput):
    """A partial update: only the fields sent change. Changing the look (description,
    attributes, style modifiers, art style, seed) marks the reference set stale."""

    model_config = ConfigDict(
        **_CAMEL,
        extra="forbid",
        json_schema_extra={"examples": [{"attributes": {"hairColour": "black"}, "seed": 7}]},
    )

    name: str | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=2000)
    attributes: AttributesPatch | None = None
    style_modifiers: list[Modifier] | None = Field(default=None, max_length=10)
    art_style: ArtStyle | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    lora_model_url: str | None = Field(
        default=None,
        max_length=2000,
        description="https URL of new LoRA weights, fetched once; null removes the LoRA.",
    )
    lora_trigger_word: str | None = Field(default=None, max_length=100)
    lora_weight: float | None = Field(default=None, ge=0.0, le=2.0)
    audience: Audience | None = Field(default=None, description=AUDIENCE_DOC)

    @field_validator(
        "name",
        "description",
        "attributes",
        "style_modifiers",
        "art_style",
        "seed",
        "audience",
        mode="before",
    )
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Validators skip defaults, so this runs only for fields the client sent.
        if value is None:
            raise ValueError("may not be null; omit the field to keep its value")
        return value


class ReferenceSetStatus(StrEnum):
    NONE = "none"
    """No reference set yet: the first portrait (or POST .../reference-set) builds one."""
    BUILDING = "building"
    READY = "ready"
    STALE = "stale"
    """Built for an older look, or its build failed: rebuild with POST .../reference-set."""


class ReferenceSet(BaseModel):
    model_config = _CAMEL

    status: ReferenceSetStatus
    job_id: str | None = Field(default=None, description="The job building (or that built) it.")
    fingerprint: str | None = Field(default=None, description="The look it was built for.")
    image_count: int = Field(default=0, description="Generated reference images stored.")


class ReferencePhoto(BaseModel):
    model_config = ConfigDict(
        **_CAMEL,
        json_schema_extra={
            "examples": [
                {
                    "id": "5b0f2c1e-8c7a-4b8e-9f31-2d4e6a7b8c90",
                    "contentType": "image/jpeg",
                    "sizeBytes": 482113,
                    "width": 1200,
                    "height": 1600,
                    "faces": 1,
                    "url": "https://s3.example/references/...",
                    "createdAt": "2026-11-21T10:00:00Z",
                }
            ]
        },
    )

    id: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    faces: int | None = Field(description="Faces found; null when no detector was available.")
    url: str = Field(description="Signed, short-lived download URL.")
    created_at: datetime


class ReferencePhotoList(BaseModel):
    model_config = _CAMEL

    items: list[ReferencePhoto]


class CharacterLoraView(BaseModel):
    model_config = _CAMEL

    trigger_word: str
    weight: float
    sha256: str
    size_bytes: int
    source_url: str | None = Field(default=None, description="Where it was fetched from.")


_CHARACTER_OUT_EXAMPLE: dict[str, Any] = {
    "id": "8d1e0c7a-3f51-4a8e-9d0b-7b1c2a3e4f50",
    **_CHARACTER_EXAMPLE,
    "seed": 2718281828,
    "referenceSet": {
        "status": "ready",
        "jobId": "1f0e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        "fingerprint": "9b2e61c4d0a7f3e8",
        "imageCount": 5,
    },
    "referencePhotos": [],
    "createdAt": "2026-11-21T10:00:00Z",
    "updatedAt": "2026-11-21T10:05:00Z",
}


class Character(BaseModel):
    model_config = ConfigDict(**_CAMEL, json_schema_extra={"examples": [_CHARACTER_OUT_EXAMPLE]})

    id: str
    name: str
    description: str
    attributes: Attributes
    style_modifiers: list[str]
    art_style: str
    seed: int
    reference_set: ReferenceSet
    reference_photos: list[ReferencePhoto]
    lora: CharacterLoraView | None = Field(
        default=None, description="The character's LoRA weights; null when it has none."
    )
    audience: Audience = Field(default="general", description=AUDIENCE_DOC)
    created_at: datetime
    updated_at: datetime


class CharacterList(BaseModel):
    model_config = _CAMEL

    items: list[Character]
    next_cursor: str | None = Field(default=None, description="Pass as ?cursor= for more.")


class ReferenceSetAccepted(BaseModel):
    model_config = ConfigDict(
        **_CAMEL,
        json_schema_extra={
            "examples": [
                {
                    "jobId": "1f0e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
                    "status": "queued",
                    "referenceSet": {
                        "status": "building",
                        "jobId": "1f0e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
                        "fingerprint": "9b2e61c4d0a7f3e8",
                        "imageCount": 0,
                    },
                }
            ]
        },
    )

    job_id: str
    status: JobStatus
    reference_set: ReferenceSet


# --- stories ------------------------------------------------------------------------------


class StoryPageIn(CleanInput):
    model_config = ConfigDict(**_CAMEL, extra="forbid")

    page_number: int = Field(ge=1, le=MAX_STORY_PAGES)
    text: str = Field(default="", max_length=4000)
    scene_description: str | None = Field(default=None, max_length=2000)
    character_ids: list[ResourceId] = Field(
        default_factory=list,
        max_length=MAX_SCENE_CHARACTERS,
        description="Characters on this page (at most 4), from the story's characterIds;"
        " empty: those its text names, all when it names none.",
    )


_STORY_EXAMPLE: dict[str, Any] = {
    "title": "Mia and the Lighthouse",
    "characterIds": ["8d1e0c7a-3f51-4a8e-9d0b-7b1c2a3e4f50"],
    "pages": [
        {
            "pageNumber": 1,
            "text": "Mia found a map in the attic.",
            "sceneDescription": "a dusty attic, afternoon light through a round window",
            "characterIds": ["8d1e0c7a-3f51-4a8e-9d0b-7b1c2a3e4f50"],
        }
    ],
}


class StoryCreate(CleanInput):
    model_config = ConfigDict(
        **_CAMEL, extra="forbid", json_schema_extra={"examples": [_STORY_EXAMPLE]}
    )

    title: str = Field(min_length=1, max_length=200)
    pages: list[StoryPageIn] = Field(min_length=1, max_length=MAX_STORY_PAGES)
    character_ids: list[ResourceId] = Field(
        min_length=1, max_length=10, description="The story's cast: your characters."
    )


class StoryUpdate(CleanInput):
    """A partial update: `pages` and `characterIds` are replaced whole when sent."""

    model_config = ConfigDict(
        **_CAMEL, extra="forbid", json_schema_extra={"examples": [{"title": "A new title"}]}
    )

    title: str | None = Field(default=None, min_length=1, max_length=200)
    pages: list[StoryPageIn] | None = Field(default=None, min_length=1, max_length=MAX_STORY_PAGES)
    character_ids: list[ResourceId] | None = Field(default=None, min_length=1, max_length=10)

    @field_validator("title", "pages", "character_ids", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null; omit the field to keep its value")
        return value


class StoryPageOut(BaseModel):
    model_config = _CAMEL

    page_number: int
    text: str
    scene_description: str | None
    character_ids: list[str]


class Story(BaseModel):
    model_config = ConfigDict(
        **_CAMEL,
        json_schema_extra={
            "examples": [
                {
                    "id": "c5a1e2f3-0b4d-4e6f-8a9b-0c1d2e3f4a5b",
                    **_STORY_EXAMPLE,
                    "createdAt": "2026-11-21T10:00:00Z",
                    "updatedAt": "2026-11-21T10:00:00Z",
                }
            ]
        },
    )

    id: str
    title: str
    pages: list[StoryPageOut]
    character_ids: list[str]
    created_at: datetime
    updated_at: datetime


class StoryList(BaseModel):
    model_config = _CAMEL

    items: list[Story]
    next_cursor: str | None = None


# --- errors (for the OpenAPI document) ----------------------------------------------------


class FieldProblem(BaseModel):
    loc: list[str | int] = Field(examples=[["body", "name"]])
    msg: str
    type: str = Field(examples=["moderation", "value_error"])
    category: str | None = Field(default=None, description="Moderation category, if any.")


class ErrorResponse(BaseModel):
    """Every error: `detail` is a message, or a list of problems each naming its field."""

    detail: str | list[FieldProblem]


_PACK_EXAMPLE: dict[str, Any] = {
    "character_id": "8d1e0c7a-3f51-4a8e-9d0b-7b1c2a3e4f50",
    "image_count": 6,
}
_PROMPT_EXAMPLE: dict[str, Any] = {
    "prompt": "A phoenix rising",
    "style": "Anime",
    "width": 1024,
    "height": 1024,
}
_PHOTO_PACK_EXAMPLE: dict[str, Any] = {
    "character_id": "8d1e0c7a-3f51-4a8e-9d0b-7b1c2a3e4f50",
    "photo_group": "professional",
    "style": "realistic",
    "quality": "high",
}


class GenerateRequest(CleanInput):
    """A pack of a character (`character_id`) or a prompt-only image (`prompt`): the body
    decides which. snake_case is this endpoint's style; camelCase is accepted too."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={"examples": [_PACK_EXAMPLE, _PROMPT_EXAMPLE, _PHOTO_PACK_EXAMPLE]},
    )

    character_id: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
    )
    image_count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PACK_SIZE,
        description="Images in the pack (1-23); a photo pack defaults to its group's prompts,"
        " a prompt-only job to 1.",
    )
    prompt: str | None = Field(
        default=None, min_length=1, max_length=2000, description="Prompt-only: what to draw."
    )
    negative_prompt: str | None = Field(default=None, max_length=2000)
    style: ArtStyle | None = Field(
        default=None, description="Default: the character's art style (standard without one)."
    )
    width: int | None = Field(default=None, ge=256, le=2048, multiple_of=8)
    height: int | None = Field(default=None, ge=256, le=2048, multiple_of=8)
    size: str | None = Field(
        default=None,
        pattern=r"^[0-9]{3,4}x[0-9]{3,4}$",
        description='"1024x1024" (default 1024 px, the module spec\'s display minimum);'
        " or width+height. Smaller sizes are drafts: cheaper, faster, not print-grade.",
    )
    quality: QualityIn = Quality.STANDARD
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$",
        description="Pin a model; omit to let the scheduler pick the cheapest that meets quality.",
    )
    photo_group: PhotoGroup | None = Field(
        default=None,
        description="A photo pack (needs 5-8 reference photos of the character): its images"
        " use the group's photo prompts (professional, lifestyle, creative: 9 each; all: 23).",
    )
    audience: Audience | None = Field(default=None, description=JOB_AUDIENCE_DOC)
    webhook: WebhookIn | None = None


class GenerateAccepted(BaseModel):
    job_id: str
    job_id_camel: str = Field(
        serialization_alias="jobId", description="The same id, as the Modal summary spells it."
    )
    status: JobStatus
    kind: str = "pack"
    image_count: int = 1
    status_url: str
    events_url: str


class Image(BaseModel):
    model_config = _CAMEL

    id: str
    index: int
    url: str | None
    thumbnail_url: str | None
    width: int
    height: int
    size_bytes: int
    seed: int
    model: str
    demo: bool
    created_at: datetime


class Job(BaseModel):
    job_id: str
    kind: str
    status: JobStatus
    result_url: str | None = Field(
        default=None, description="The first stored image's display URL (prompt-only jobs)."
    )
    character_id: str | None
    progress: float = Field(ge=0.0, le=1.0)
    completed: int
    failed: int
    total: int
    created_at: datetime
    finished_at: datetime | None
    audience: Audience = Field(default="general", description=AUDIENCE_DOC)
    images: list[Image]


class StreamToken(BaseModel):
    model_config = _CAMEL

    token: str
    expires_in: int
