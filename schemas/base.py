"""Base classes shared by every message contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """A frozen message model. Unknown fields are ignored so contracts can evolve additively."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


class Message(Contract):
    """A top-level message that travels on a topic."""

    SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = Field(default=1, ge=1)
