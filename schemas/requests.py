"""Commands on the `requests` topic (key: user id)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from schemas.base import Contract, Message, utcnow
from schemas.characters import MAX_SEED, Audience, CharacterSpec

MAX_PACK_SIZE = 23
MAX_REGENERATIONS = 5
"""Regenerations allowed per image (the original is version 1, so at most version 6)."""
MAX_STORY_PAGES = 100
MAX_IMAGES_PER_PAGE = 4


class UserTier(StrEnum):
    PAID = "paid"
    FREE = "free"


class JobKind(StrEnum):
    PACK = "pack"
    PORTRAIT = "portrait"
    SCENE = "scene"
    STORY = "story"
    REGENERATE = "regenerate"
    REFERENCE = "reference"
    """Per image only: one image of a character's reference set (front, side, expressions)."""
    PROMPT = "prompt"
    """An image from a prompt alone: no character (a scene without one, a design)."""


class PhotoGroup(StrEnum):
    """A photo pack's style group (PinGlass): which of the 23 photo prompts it draws on."""

    ALL = "all"
    PROFESSIONAL = "professional"
    LIFESTYLE = "lifestyle"
    CREATIVE = "creative"


class Quality(StrEnum):
    """What a request needs from a model; the scheduler picks the cheapest that meets it."""

    DRAFT = "draft"
    STANDARD = "standard"
    HIGH = "high"


class AspectRatio(StrEnum):
    WIDE = "16:9"
    CLASSIC = "4:3"
    SQUARE = "1:1"


class ReviewDecision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


PROMPT_CHARACTER_PREFIX = "prompt-"
"""A prompt-only job's stand-in character id is this + the job id (it owns the images)."""


class GenerateImages(Message):
    """Create a job of one or more images for a character (or, kind prompt, of a prompt)."""

    type: Literal["generate_images"] = "generate_images"
    job_id: str
    user_id: str
    tier: UserTier
    kind: JobKind = JobKind.PACK
    character: CharacterSpec
    image_count: int = Field(ge=1, le=MAX_PACK_SIZE)
    style: str = "standard"
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8)
    quality: Quality = Quality.STANDARD
    model: str | None = Field(
        default=None, description="Pin a model; None lets the scheduler pick."
    )
    story_id: str | None = None
    photo_group: PhotoGroup | None = Field(
        default=None,
        description="A photo pack (kind pack): its images draw on the photo prompts of this"
        " group instead of the pose variations.",
    )
    prompt: str = Field(
        default="", max_length=2000, description="Kind prompt: what to draw (moderated)."
    )
    negative_prompt: str = Field(default="", max_length=2000)
    audience: Audience | None = Field(
        default=None,
        description="Who the images are for; None: its characters' audiences. The images are"
        ' held to the strictest of this and every character\'s ("children" is stricter).',
    )
    requested_at: datetime = Field(default_factory=utcnow)


class StoryPage(Contract):
    page_number: int = Field(ge=1, le=MAX_STORY_PAGES)
    text: str = Field(default="", max_length=4000)
    scene_description: str | None = Field(default=None, max_length=2000)
    character_ids: list[str] = Field(default_factory=list, max_length=5)
    """Characters on this page; empty means every character of the story."""


class StorySpec(Contract):
    id: str
    title: str = Field(min_length=1, max_length=200)
    pages: list[StoryPage] = Field(min_length=1, max_length=MAX_STORY_PAGES)
    characters: list[CharacterSpec] = Field(min_length=1, max_length=10)


class GenerateScene(Message):
    """Illustrate one story page with its characters in it."""

    type: Literal["generate_scene"] = "generate_scene"
    job_id: str
    user_id: str
    tier: UserTier
    story_id: str
    page_number: int = Field(ge=1, le=MAX_STORY_PAGES)
    characters: list[CharacterSpec] = Field(min_length=1, max_length=5)
    scene_description: str = Field(default="", max_length=2000)
    page_text: str = Field(default="", max_length=4000)
    include_text: bool = False
    aspect_ratio: AspectRatio = AspectRatio.WIDE
    style: str = "standard"
    quality: Quality = Quality.STANDARD
    model: str | None = None
    audience: Audience | None = Field(
        default=None,
        description="Who the images are for; None: its characters' audiences. The images are"
        ' held to the strictest of this and every character\'s ("children" is stricter).',
    )
    requested_at: datetime = Field(default_factory=utcnow)


class GenerateStory(Message):
    """Illustrate a whole story: portraits first, then scenes that depend on them."""

    type: Literal["generate_story"] = "generate_story"
    job_id: str
    user_id: str
    tier: UserTier
    story: StorySpec
    style: str = "standard"
    include_character_portraits: bool = True
    include_scene_images: bool = True
    images_per_page: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_PAGE)
    include_text: bool = False
    aspect_ratio: AspectRatio = AspectRatio.WIDE
    quality: Quality = Quality.STANDARD
    model: str | None = None
    audience: Audience | None = Field(
        default=None,
        description="Who the images are for; None: its characters' audiences. The images are"
        ' held to the strictest of this and every character\'s ("children" is stricter).',
    )
    requested_at: datetime = Field(default_factory=utcnow)


class ImageModifications(Contract):
    style: str | None = None
    prompt: str | None = Field(default=None, max_length=1000)
    """Appended to the original prompt."""
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)


class RegenerateImage(Message):
    """Make a new version of an existing image; the original is kept."""

    type: Literal["regenerate_image"] = "regenerate_image"
    job_id: str
    user_id: str
    tier: UserTier
    image_id: str
    version: int = Field(ge=2, le=MAX_REGENERATIONS + 1)
    """The version this regeneration creates (the gateway assigns it from its read model)."""
    modifications: ImageModifications = Field(default_factory=ImageModifications)
    requested_at: datetime = Field(default_factory=utcnow)


class CancelJob(Message):
    type: Literal["cancel_job"] = "cancel_job"
    job_id: str
    user_id: str
    requested_at: datetime = Field(default_factory=utcnow)


class DeleteImage(Message):
    type: Literal["delete_image"] = "delete_image"
    image_id: str
    user_id: str
    requested_at: datetime = Field(default_factory=utcnow)


class DeleteCharacter(Message):
    """Remove every image of a character (all versions and renditions) and its references."""

    type: Literal["delete_character"] = "delete_character"
    character_id: str
    user_id: str
    requested_at: datetime = Field(default_factory=utcnow)


class DeleteStory(Message):
    """Remove every image of a story's pages."""

    type: Literal["delete_story"] = "delete_story"
    story_id: str
    user_id: str
    requested_at: datetime = Field(default_factory=utcnow)


class DiscardImage(Message):
    """From the scheduler to storage: this image version ended without being stored (its
    last attempt failed for good, or its job was cancelled while it ran); an attempt of it
    that still arrives (one given up as overdue) is thrown away unannounced, since nothing
    about a job may follow the job's last word."""

    type: Literal["discard_image"] = "discard_image"
    image_id: str
    version: int = Field(ge=1)
    job_id: str
    user_id: str
    reason: str = Field(max_length=200)
    prefix: str = Field(
        default="",
        max_length=500,
        description="The version's final-object prefix (imagegen.object_layout.image_prefix):"
        " what an attempt of it wrote there before failing is deleted.",
    )
    requested_at: datetime = Field(default_factory=utcnow)


class ReviewImage(Message):
    type: Literal["review_image"] = "review_image"
    image_id: str
    user_id: str
    decision: ReviewDecision
    requested_at: datetime = Field(default_factory=utcnow)


Request = Annotated[
    GenerateImages
    | GenerateScene
    | GenerateStory
    | RegenerateImage
    | CancelJob
    | DeleteImage
    | DeleteCharacter
    | DeleteStory
    | DiscardImage
    | ReviewImage,
    Field(discriminator="type"),
]
REQUEST_ADAPTER: TypeAdapter[Request] = TypeAdapter(Request)
