"""HTTP bodies for generation, images and jobs (camelCase, as the products spell them).

Every identifier is constrained to a safe alphabet: ids are UUIDs here, and a NUL or a
megabyte-long id must get a 422 naming the field, never reach PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from schemas.characters import MAX_SEED, Audience
from schemas.events import JobStatus
from schemas.jobs import MAX_SCENE_CHARACTERS
from schemas.requests import (
    MAX_IMAGES_PER_PAGE,
    MAX_STORY_PAGES,
    AspectRatio,
    PhotoGroup,
    Quality,
    ReviewDecision,
)
from schemas.styles import STYLE_NAMES, known_style
from services.gateway.webhooks.models import WebhookIn, WebhookStatus


def check_style(style: str) -> str:
    """The canonical name of a known art style (aliases and spelling variants accepted)."""
    name = known_style(style)
    if name is None:
        raise ValueError(f"unknown style {style!r}; known styles: {', '.join(STYLE_NAMES)}")
    return name


ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"
Id = Annotated[str, Field(pattern=ID_PATTERN, examples=["0b8f6a2c-5d1e-4c3b-8f7a-2e9d1c4b6a50"])]
Style = Annotated[
    str,
    Field(min_length=1, max_length=60, examples=["watercolor"]),
    AfterValidator(check_style),
]
ModelName = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@-]*$"),
]


def quality_word(value: object) -> object:
    """OpenAI's words for quality, accepted as ours: "hd" is high, "low"/"medium" draft and
    standard (the module spec's portrait body sends `quality: "hd"`)."""
    if isinstance(value, str):
        word = value.strip().lower()
        return _QUALITY_WORDS.get(word, word)
    return value


_QUALITY_WORDS = {"hd": "high", "low": "draft", "medium": "standard", "auto": "standard"}
QualityIn = Annotated[
    Quality,
    BeforeValidator(quality_word),
    Field(description='draft, standard or high ("hd", "low", "medium" accepted as aliases).'),
]

PHOTO_GROUP_SIZES: dict[PhotoGroup, int] = {
    PhotoGroup.PROFESSIONAL: 9,
    PhotoGroup.LIFESTYLE: 9,
    PhotoGroup.CREATIVE: 9,
    PhotoGroup.ALL: 23,
}
"""A photo pack's default image count: its group's photo prompts (PinGlass)."""

ImageSize = Literal[
    "512x512", "768x768", "1024x1024", "1024x576", "576x1024", "1024x768", "768x1024"
]

JOB_AUDIENCE_DOC = (
    'Who this job\'s images are for: "general" or "children" (the image-safety check refuses'
    " suggestive images at a lower score). Default: the strictest of its characters'"
    ' audiences; a job may make it stricter, never looser (a "general" job of a "children"'
    " character is a 422)."
)
_IN = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
_OUT = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


class ImageType(StrEnum):
    PORTRAIT = "portrait"
    SCENE = "scene"
    PACK = "pack"
    REFERENCE = "reference"


SceneSource = Literal["request", "llm", "extractor", ""]
"""Who wrote the scene an image shows: the request, the LLM, the page-text extractor; ""
for images with no scene (portraits, packs)."""


class ImageStatus(StrEnum):
    QUEUED = "queued"
    GENERATING = "generating"
    COMPLETED = "completed"
    """Stored and viewable (the module spec's word; `ready` is accepted as an alias in filters)."""
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELETING = "deleting"

    @classmethod
    def _missing_(cls, value: object) -> ImageStatus | None:
        # The word before the module spec's: old clients' `?status=ready` still filters.
        return cls.COMPLETED if value == "ready" else None


class ReviewStatus(StrEnum):
    UNREVIEWED = "unreviewed"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


# --- requests ---------------------------------------------------------------------------


class PortraitOptions(BaseModel):
    model_config = _IN

    model: ModelName | None = Field(default=None, description="Pin a model; omit to let us pick.")
    size: ImageSize = Field(
        default="1024x1024",
        description="1024 px and up meets the module spec's display minimum (NFR-IMGGEN-003);"
        " 512x512 and the 768 px sizes are drafts: cheaper, faster, not print-grade.",
    )
    quality: QualityIn = Quality.STANDARD


class PortraitRequest(BaseModel):
    model_config = ConfigDict(
        **_IN,
        json_schema_extra={
            "examples": [
                {
                    "characterId": "8d1e0c7a-3f51-4a8e-9d0b-7b1c2a3e4f50",
                    "style": "watercolor",
                    "options": {"size": "1024x1024", "quality": "standard"},
                }
            ]
        },
    )

    character_id: Id
    story_id: Id | None = None
    style: Style
    options: PortraitOptions = Field(default_factory=PortraitOptions)
    audience: Audience | None = Field(default=None, description=JOB_AUDIENCE_DOC)
    webhook: WebhookIn | None = Field(default=None, description="Signed POSTs as it runs.")


class SceneOptions(BaseModel):
    model_config = _IN

    model: ModelName | None = None
    aspect_ratio: AspectRatio = AspectRatio.WIDE
    include_text: bool = Field(default=False, description="Set the page's text onto the image.")
    quality: QualityIn = Quality.STANDARD


class SceneRequest(BaseModel):
    model_config = ConfigDict(
        **_IN,
        json_schema_extra={
            "examples": [
                {
                    "storyId": "5a0c2b9e-1d3f-4e6a-8b7c-9d0e1f2a3b4c",
                    "pageNumber": 3,
                    "characterIds": ["8d1e0c7a-3f51-4a8e-9d0b-7b1c2a3e4f50"],
                    "sceneDescription": "Mia and the fox cross a moonlit bridge",
                    "style": "watercolor",
                    "options": {"aspectRatio": "16:9", "includeText": True},
                }
            ]
        },
    )

    story_id: Id
    page_number: int = Field(ge=1, le=MAX_STORY_PAGES)
    character_ids: list[Id] = Field(
        min_length=1,
        max_length=MAX_SCENE_CHARACTERS,
        description=f"1-{MAX_SCENE_CHARACTERS} characters, each drawn in its own region.",
    )
    scene_description: str | None = Field(default=None, max_length=2000)
    style: Style
    options: SceneOptions = Field(default_factory=SceneOptions)
    audience: Audience | None = Field(default=None, description=JOB_AUDIENCE_DOC)
    webhook: WebhookIn | None = Field(default=None, description="Signed POSTs as it runs.")


class StoryGenerateRequest(BaseModel):
    model_config = ConfigDict(
        **_IN,
        json_schema_extra={
            "examples": [
                {
                    "style": "watercolor",
                    "includeCharacterPortraits": True,
                    "includeSceneImages": True,
                    "imagesPerPage": 1,
                }
            ]
        },
    )

    style: Style
    include_character_portraits: bool = True
    include_scene_images: bool = True
    images_per_page: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_PAGE)
    options: SceneOptions = Field(default_factory=SceneOptions)
    audience: Audience | None = Field(default=None, description=JOB_AUDIENCE_DOC)
    webhook: WebhookIn | None = Field(default=None, description="Signed POSTs as it runs.")


class Modifications(BaseModel):
    model_config = _IN

    style: Style | None = None
    prompt: str | None = Field(
        default=None, min_length=1, max_length=1000, description="Appended to the prompt."
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class RegenerateRequest(BaseModel):
    model_config = ConfigDict(
        **_IN,
        json_schema_extra={
            "examples": [{"modifications": {"prompt": "smiling, wearing a red scarf", "seed": 42}}]
        },
    )

    modifications: Modifications = Field(default_factory=Modifications)


class ReviewRequest(BaseModel):
    model_config = ConfigDict(**_IN, json_schema_extra={"examples": [{"decision": "approved"}]})

    decision: ReviewDecision


# --- responses --------------------------------------------------------------------------


class ErrorBody(BaseModel):
    detail: str = Field(examples=["image 0b8f… not found"])


class ImageJobAccepted(BaseModel):
    model_config = _OUT

    job_id: str
    image_id: str
    status: JobStatus = JobStatus.QUEUED
    estimated_completion_time: datetime
    status_url: str
    events_url: str


class StoryJobAccepted(BaseModel):
    model_config = _OUT

    batch_job_id: str
    total_images: int
    status: JobStatus = JobStatus.QUEUED
    estimated_completion_time: datetime
    status_url: str
    events_url: str


class RegenerateAccepted(ImageJobAccepted):
    new_image_id: str = Field(
        description="The new version's image id: versions share their image's id (the"
        " original is kept as version `parentVersion`), so this equals `imageId`."
    )
    version: int
    parent_version: int


class DeleteAccepted(BaseModel):
    model_config = _OUT

    message: str = "Image deleted"
    image_id: str
    status: Literal["deleting"] = Field(
        default="deleting",
        description="Hidden from lists at once; storage removes the files (image_deleted).",
    )


class ReviewAccepted(BaseModel):
    model_config = _OUT

    image_id: str
    version: int
    decision: ReviewDecision
    review_status: ReviewStatus = Field(
        default=ReviewStatus.PENDING,
        description="pending until the image store confirms; then approved or rejected.",
    )


class CancelAccepted(BaseModel):
    cancelled: bool = True
    job_id: str
    status: JobStatus = Field(description="The job's status when the cancel was sent.")


class CharacterScoreOut(BaseModel):
    model_config = _OUT

    score: float | None = Field(
        description="The character's face against its identity images, 0..1; null when it"
        " was not scored or is missing."
    )
    status: Literal["recognised", "drifted", "missing", "not_scored"]
    reason: str = ""


class ImageOut(BaseModel):
    model_config = _OUT

    id: str
    version: int
    parent_version: int | None
    type: str
    status: ImageStatus
    job_id: str
    story_id: str | None
    character_id: str | None
    page_number: int | None
    url: str | None = Field(description="Signed URL of the display rendition.")
    cdn_url: str | None
    thumbnail_url: str | None
    original_url: str | None = Field(
        default=None, description="Signed URL of the original, as generated (PNG)."
    )
    print_url: str | None = Field(
        default=None, description="Signed URL of the print-ready rendition (2048 px and up)."
    )
    style: str
    width: int | None
    height: int | None
    file_size: int | None
    seed: int | None
    model: str | None
    provider: str | None
    demo: bool
    consistency_score: float | None = Field(
        description="Face consistency, 0..1: the worst of characterScores; null when not"
        " scored (notScoredReason says why when a score was due)."
    )
    character_scores: dict[str, CharacterScoreOut] = Field(
        default_factory=dict,
        description="Each character of the image (by id): its score and status (recognised,"
        " drifted, missing or not_scored).",
    )
    not_scored_reason: str | None = Field(
        default=None,
        description='Why a consistency score was due but not given ("no face found in the'
        ' image", ...); null when scored or when no check applied.',
    )
    flagged: bool = Field(description="No variation reached the consistency threshold.")
    review_status: ReviewStatus
    created_at: datetime
    prompt: str = Field(default="", description="The prompt the image was generated from.")
    negative_prompt: str = ""
    scene_description: str = Field(
        default="", description="The scene the image shows (scenes and story pages)."
    )
    scene_source: SceneSource = Field(
        default="",
        description='Who wrote the scene: "request" (the caller), "llm" or "extractor" (derived'
        ' from the page text); "" when there is none.',
    )
    quality_score: float | None = Field(
        default=None,
        description="Technical quality, 0..1 (sharpness, exposure, contrast, colourfulness);"
        " null until stored or when not scored.",
    )


class ImageDetail(ImageOut):
    versions: list[ImageOut] = Field(description="Every version, oldest first.")


class ImageList(BaseModel):
    model_config = _OUT

    images: list[ImageOut] = Field(description="The page of images (the module spec's name).")
    items: list[ImageOut] = Field(description="The same list, under its earlier name.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class QueueStatus(BaseModel):
    """Where a waiting job stands in its tier's queue (services/gateway/queueing.py)."""

    model_config = _OUT

    tier: str = Field(description="realtime, standard or economy.")
    position: int = Field(ge=1, description="1: its next image is the next the tier serves.")
    images_ahead: int = Field(ge=0)
    estimated_wait_seconds: int = Field(ge=0, description="Until its next image starts.")
    estimated_start_time: datetime


class JobOut(BaseModel):
    model_config = _OUT

    job_id: str
    kind: str
    status: JobStatus
    progress: float = Field(ge=0.0, le=1.0)
    total: int
    completed: int
    failed: int
    running: int
    phase: str | None
    reason_code: str | None = Field(
        description="Why it ended short: budget_exceeded, user_budget_exceeded, …"
    )
    reason: str | None
    cost_usd: Decimal = Field(description="Actual cost so far, as a decimal string.")
    character_id: str | None
    story_id: str | None
    page_number: int | None
    image_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    audience: Audience = Field(
        default="general",
        description='Who its images are for ("children": the stricter image-safety threshold).',
    )
    queue: QueueStatus | None = Field(
        default=None,
        description="Position in its tier's queue and the wait, while an image of it waits"
        " there; null otherwise. Also streamed as `queue_status` SSE messages.",
    )


class JobDetail(JobOut):
    images: list[ImageOut]
    not_scored: int = Field(
        default=0,
        description="Stored images that were due a consistency score and got none (each"
        " image's notScoredReason says why): never a silent pass.",
    )
    webhook: WebhookStatus | None = Field(
        default=None, description="The job's webhook and every delivery attempt (no secret)."
    )


class JobList(BaseModel):
    model_config = _OUT

    items: list[JobOut]
    next_cursor: str | None
