"""Commands on the `requests` topic (key: user id)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from schemas.base import Message, utcnow
from schemas.characters import CharacterSpec

MAX_PACK_SIZE = 23


class UserTier(StrEnum):
    PAID = "paid"
    FREE = "free"


class JobKind(StrEnum):
    PACK = "pack"
    PORTRAIT = "portrait"
    SCENE = "scene"
    STORY = "story"
    REGENERATE = "regenerate"


class ReviewDecision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class GenerateImages(Message):
    """Create a job of one or more images for a character."""

    type: Literal["generate_images"] = "generate_images"
    job_id: str
    user_id: str
    tier: UserTier
    kind: JobKind = JobKind.PACK
    character: CharacterSpec
    image_count: int = Field(ge=1, le=MAX_PACK_SIZE)
    style: str = "standard"
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
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


class ReviewImage(Message):
    type: Literal["review_image"] = "review_image"
    image_id: str
    user_id: str
    decision: ReviewDecision
    requested_at: datetime = Field(default_factory=utcnow)


Request = Annotated[
    GenerateImages | CancelJob | DeleteImage | ReviewImage, Field(discriminator="type")
]
REQUEST_ADAPTER: TypeAdapter[Request] = TypeAdapter(Request)
