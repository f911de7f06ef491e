"""HTTP bodies for webhooks: what a generation request may carry, what a job shows."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

WebhookEvent = Literal["terminal", "image"]
EVENT_TYPES: dict[WebhookEvent, tuple[str, ...]] = {
    "terminal": ("pack_completed",),
    "image": ("image_stored",),
}
"""Which projected events each subscription sends. Every job ends with exactly one
pack_completed (a cancelled one too, with status "cancelled"), so "terminal" is one
delivery per job."""

_IN = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
_OUT = ConfigDict(alias_generator=to_camel, populate_by_name=True)


def _terminal_only() -> list[WebhookEvent]:
    return ["terminal"]


class WebhookIn(BaseModel):
    """`webhook` of a generation request."""

    model_config = ConfigDict(
        **_IN,
        json_schema_extra={
            "examples": [
                {
                    "url": "https://example.com/hooks/imagegen",
                    "events": ["terminal", "image"],
                    "secret": "a-long-random-string-from-your-vault",
                }
            ]
        },
    )

    url: str = Field(min_length=1, max_length=2000, description="https, or an allowed host.")
    events: list[WebhookEvent] = Field(
        default_factory=_terminal_only,
        min_length=1,
        max_length=2,
        description='["terminal"] (the job ended) or ["terminal", "image"] (each image too).',
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=200,
        repr=False,
        description="Signs the deliveries; default: the server's webhook secret.",
    )

    @field_validator("events")
    @classmethod
    def _terminal_always(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        if "terminal" not in events:
            raise ValueError('must include "terminal": every webhook hears how its job ended')
        return list(dict.fromkeys(events))

    @field_validator("secret")
    @classmethod
    def _printable(cls, secret: str | None) -> str | None:
        if secret is not None and not secret.isprintable():
            raise ValueError("must be printable text")
        return secret


class WebhookAttempt(BaseModel):
    model_config = _OUT

    attempt: int
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null on error.")
    error: str | None = Field(description="Timeout, connection or refusal reason.")
    duration_ms: int | None


class WebhookDelivery(BaseModel):
    model_config = _OUT

    id: str = Field(description="The Webhook-Id header: the same on every retry.")
    event_type: str
    event_id: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    log: list[WebhookAttempt]


class WebhookStatus(BaseModel):
    """A job's webhook as its owner sees it (never the secret)."""

    model_config = _OUT

    url: str
    events: list[WebhookEvent]
    deliveries: list[WebhookDelivery]
