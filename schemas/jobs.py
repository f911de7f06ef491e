"""Per-image jobs on `jobs.<tier>` (key: job id). Each is self-contained."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.base import Contract, Message, utcnow
from schemas.characters import CharacterSpec
from schemas.requests import JobKind
from schemas.topics import Tier


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

    @property
    def idempotency_key(self) -> str:
        return f"{self.job_id}:{self.image_index}:{self.attempt}"


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
    reference_keys: list[str] = Field(default_factory=list)
    enqueued_at: datetime = Field(default_factory=utcnow)
