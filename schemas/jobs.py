"""Per-image jobs on `jobs.<tier>` (key: job id). Each is self-contained."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Contract, Message, utcnow
from schemas.characters import Audience, CharacterSpec
from schemas.requests import JobKind, Quality
from schemas.topics import Tier

_IMAGE_NAMESPACE = uuid.UUID("0b8f6a2c-5d1e-4c3b-8f7a-2e9d1c4b6a50")


def image_id_for(job_id: str, index: int) -> str:
    """The id of image `index` of a job: stable, so the gateway can name it before it exists
    and a redelivered request yields the same ids."""
    return str(uuid.uuid5(_IMAGE_NAMESPACE, f"{job_id}:{index}"))


class ImageIdentity(Contract):
    """Which image of which job this is; carried by every per-image message."""

    job_id: str
    image_id: str
    image_index: int = Field(ge=0)
    image_count: int = Field(ge=1)
    user_id: str
    character_id: str
    kind: JobKind = JobKind.PACK
    version: int = Field(default=1, ge=1)
    attempt: int = Field(default=1, ge=1)
    variation: int = Field(default=0, ge=0)
    """Consistency re-tries: 0 for the first image, n for the n-th new seed variation."""
    story_id: str | None = None
    page_number: int | None = None
    audience: Audience = "general"
    """Who the image is for: "children" holds it to the image-safety check's stricter
    threshold (a job or character option, stamped by the scheduler)."""
    tier: Tier | None = None
    """The tier whose topic carries this attempt, stamped by the scheduler when it dispatches
    it (None in messages from before tiers travelled with the image); events about the image
    carry it for analysts."""

    @property
    def idempotency_key(self) -> str:
        return f"{self.job_id}:{self.image_index}:{self.attempt}:{self.variation}"


MAX_SCENE_CHARACTERS = 4
"""Characters one image can show, each in its own region (a scene with more is refused)."""


class CharacterRegion(Contract):
    """Where one character of a multi-character image stands, and what conditions it there.

    The box is in fractions of the image (0..1, x to the right, y down), so it holds for any
    size; the scheduler plans it from the cast and the aspect ratio, the generator masks the
    character's references to it, and postprocess may read it to place faces.
    """

    character_id: str
    x0: float = Field(ge=0.0, le=1.0)
    y0: float = Field(ge=0.0, le=1.0)
    x1: float = Field(ge=0.0, le=1.0)
    y1: float = Field(ge=0.0, le=1.0)
    reference_keys: list[str] = Field(default_factory=list)
    """This character's own reference images (uploads, reference set, its portrait)."""


class GenerateImage(Message):
    """Generate one image."""

    type: Literal["generate_image"] = "generate_image"
    image: ImageIdentity
    tier: Tier
    character: CharacterSpec
    prompt: str = Field(max_length=4000)
    negative_prompt: str = Field(default="", max_length=2000)
    pose: str = ""
    seed: int = Field(ge=0)
    style: str = "standard"
    width: int = Field(ge=64, le=2048)
    height: int = Field(ge=64, le=2048)
    steps: int = Field(default=20, ge=1, le=150)
    guidance: float = Field(default=7.0, ge=0.0, le=30.0)
    model: str | None = None
    provider: str | None = Field(default=None, description="None: the generator's default.")
    quality: Quality = Quality.STANDARD
    estimated_cost_usd: float = Field(default=0.0, ge=0)
    reference_keys: list[str] = Field(default_factory=list)
    characters: list[CharacterSpec] = Field(default_factory=list, max_length=4)
    """Other characters in the picture (scenes); `character` is the main one."""
    layout: list[CharacterRegion] = Field(default_factory=list, max_length=MAX_SCENE_CHARACTERS)
    """One region per character of a multi-character image, main character first; empty
    when one character fills the image (`reference_keys` then conditions all of it)."""
    scene_description: str = Field(default="", max_length=2000)
    scene_source: str = Field(
        default="", description='"request", "llm" or "extractor": where the scene came from.'
    )
    extra_prompt: str = Field(default="", max_length=1000)
    max_variations: int = Field(default=0, ge=0, le=5)
    """Consistency loop: new-seed variations allowed if postprocess flags this image."""
    overlay_text: str | None = Field(default=None, max_length=4000)
    """Text postprocess sets onto the image (story pages with includeText)."""
    enqueued_at: datetime = Field(default_factory=utcnow)
