"""HTTP request and response bodies (camelCase for the v1 resources, as the products use)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from schemas.characters import MAX_SEED, CharacterAttributes
from schemas.events import JobStatus
from schemas.requests import MAX_PACK_SIZE

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Attributes(CharacterAttributes):
    """The contract's attributes, spelled in camelCase; unknown names are refused."""

    model_config = ConfigDict(**_CAMEL, frozen=True, extra="forbid")


class CharacterCreate(BaseModel):
    model_config = ConfigDict(**_CAMEL, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000)
    attributes: Attributes = Field(default_factory=Attributes)
    style_modifiers: list[str] = Field(default_factory=list, max_length=10)
    art_style: str = Field(default="standard", min_length=1, max_length=60)
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Locked seed; random when absent."
    )


class Character(BaseModel):
    model_config = _CAMEL

    id: str
    name: str
    description: str
    attributes: Attributes
    style_modifiers: list[str]
    art_style: str
    seed: int
    created_at: datetime


class CharacterList(BaseModel):
    model_config = _CAMEL

    items: list[Character]


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    character_id: str = Field(min_length=1, max_length=100)
    image_count: int = Field(ge=1, le=MAX_PACK_SIZE)


class GenerateAccepted(BaseModel):
    job_id: str
    status: JobStatus
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
    character_id: str | None
    progress: float = Field(ge=0.0, le=1.0)
    completed: int
    failed: int
    total: int
    created_at: datetime
    finished_at: datetime | None
    images: list[Image]


class StreamToken(BaseModel):
    model_config = _CAMEL

    token: str
    expires_in: int
