"""The `events` topic: one CloudEvents-style envelope for everything (key: job id).

Event ids are deterministic (see `event_id`): a redelivered handler that emits the
same event again emits the same id, and readers deduplicate on it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, TypeAdapter

from schemas.base import Contract, Message, utcnow
from schemas.images import CharacterScore
from schemas.jobs import ImageIdentity

_EVENT_NAMESPACE = uuid.UUID("6f1c2b1e-3c7a-4f7e-9a51-6f3d2f0c9e11")


def event_id(event_type: str, *parts: object) -> str:
    """A stable id for an event that is identified by its type and parts."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, "|".join([event_type, *map(str, parts)])))


def image_envelope(image: ImageIdentity, event_type: str, *parts: object) -> dict[str, Any]:
    """The envelope fields of an event about one image (the emitter stamps the source)."""
    return {
        "id": event_id(event_type, image.job_id, image.image_index, *parts),
        "source": "",
        "subject": f"jobs/{image.job_id}/images/{image.image_index}",
        "job_id": image.job_id,
        "user_id": image.user_id,
    }


def image_facts(image: ImageIdentity) -> dict[str, Any]:
    """What every per-image event's data says of its image for analysts: its character and
    the tier of the attempt."""
    return {
        "character_id": image.character_id,
        "tier": image.tier.value if image.tier is not None else None,
    }


class JobStatus(StrEnum):
    ACCEPTED = "accepted"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIALLY_COMPLETED = "partially_completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.PARTIALLY_COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)


# --- payloads ---------------------------------------------------------------------------

_CHARACTER = (
    "The character the image is of (a prompt-only job's stand-in id); null only in events"
    " from before it was carried."
)
_TIER = (
    "The priority tier of the attempt (realtime, standard, economy: the jobs topic that"
    " carried it); null only in events from before it was carried."
)


class GenerationQueuedData(Contract):
    image_id: str
    image_index: int
    image_count: int
    character_id: str
    tier: str
    attempt: int = 1
    kind: str = "pack"
    version: int = 1
    provider: str | None = None
    model: str | None = None
    estimated_cost_usd: float = 0.0
    story_id: str | None = None
    page_number: int | None = None


class GenerationStartedData(Contract):
    image_id: str
    image_index: int
    attempt: int = 1
    backend: str
    model: str
    queue_wait_ms: int = 0
    provider: str = ""
    character_id: str | None = Field(default=None, description=_CHARACTER)
    tier: str | None = Field(default=None, description=_TIER)


class GenerationProgressData(Contract):
    image_id: str
    image_index: int
    step: int
    total_steps: int


class GenerationCompletedData(Contract):
    image_id: str
    image_index: int
    duration_ms: int
    backend: str
    model: str
    seed: int
    cost_usd: float
    provider: str = ""
    gpu_seconds: float | None = None
    character_id: str | None = Field(default=None, description=_CHARACTER)
    tier: str | None = Field(default=None, description=_TIER)


class ErrorType(StrEnum):
    """Well-known `GenerationFailedData.error_type` values; any other is an exception name."""

    CANCELLED = "Cancelled"
    """The attempt stopped because its job was cancelled."""
    CONTENT_POLICY_VIOLATION = "ContentPolicyViolation"
    """The provider's safety system refused the prompt or a reference image: final for the
    image, which is neither retried nor sent to another provider."""
    ATTEMPT_OVERDUE = "AttemptOverdue"
    """Said by the scheduler: the attempt started but did not complete, or completed but was
    not stored, within its deadline; it is retried like any retryable failure."""


class GenerationFailedData(Contract):
    image_id: str
    image_index: int
    attempt: int
    error_type: str = Field(
        description=(
            "What kind of failure: an exception name, or a well-known value -"
            f" {ErrorType.CANCELLED.value!r} (the job was cancelled),"
            f" {ErrorType.CONTENT_POLICY_VIOLATION.value!r} (the"
            " provider's safety system refused the prompt or a reference image; final for"
            " the image: not retried, not sent to another provider),"
            f" {ErrorType.ATTEMPT_OVERDUE.value!r} (from the scheduler: the attempt passed"
            " its deadline and is retried)."
        )
    )
    error: str
    retryable: bool
    final: bool = Field(description="True when no further attempt will be made.")
    provider: str = ""
    model: str = Field(
        default="", description="The model of the attempt; empty when none was named."
    )
    character_id: str | None = Field(default=None, description=_CHARACTER)
    tier: str | None = Field(default=None, description=_TIER)


class StoredRendition(Contract):
    name: str
    key: str
    size_bytes: int
    width: int
    height: int
    format: str
    content_type: str


class ImageStoredData(Contract):
    image_id: str
    image_index: int
    character_id: str
    kind: str
    version: int
    size_bytes: int
    width: int
    height: int
    renditions: list[StoredRendition]
    seed: int
    model: str
    backend: str
    provider: str
    demo: bool
    cost_usd: float
    consistency_score: float | None = None
    """The worst character's score; None: not scored (`not_scored_reason` says why)."""
    character_scores: dict[str, CharacterScore] = Field(default_factory=dict)
    """Each character's score and status (recognised, drifted, missing, not_scored)."""
    not_scored_reason: str | None = None
    """Why the image has no consistency score where one was due (e.g. no face found)."""
    quality_score: float | None = None
    """Technical quality, 0..1 (sharpness, exposure, contrast, colourfulness); None when
    the image was not scored."""
    flagged: bool = False
    """True when no variation reached the consistency threshold (the best one is kept), or
    when the quality score is below postprocess's review threshold (off by default)."""
    story_id: str | None = None
    page_number: int | None = None
    style: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    scene_description: str = ""
    scene_source: str = ""
    tier: str | None = Field(default=None, description=_TIER)


class ConsistencyFlaggedData(Contract):
    """Postprocess found an image unlike its character; `final` means no variation is left."""

    image_id: str
    image_index: int
    version: int = 1
    variation: int
    score: float
    threshold: float
    final: bool
    characters: list[str] = Field(default_factory=list)
    """The characters that drifted or are missing (the ones the re-draw is for)."""


class ImageDeletedData(Contract):
    image_id: str
    versions: list[int]


class ImageReviewedData(Contract):
    image_id: str
    version: int
    decision: str


class JobProgressData(Contract):
    """Overall progress of a multi-image job (pack or story)."""

    total: int
    completed: int
    failed: int
    running: int = 0
    phase: str = ""
    """For stories: "portraits" or "scenes"."""


class PackCompletedData(Contract):
    status: JobStatus
    image_count: int
    completed_count: int
    failed_count: int
    total_duration_ms: int
    reason_code: str | None = None
    """Why a job ended short, for example "budget_exceeded", "user_limit" or
    "content_policy_violation" (an image was refused by the provider's safety system)."""
    reason: str | None = None
    cost_usd: float = 0.0
    character_id: str | None = Field(
        default=None,
        description=(
            "The character of the job's first image (a pack's or portrait's character, a"
            " scene's or story's first); null for a job that planned no image, and in events"
            " from before it was carried."
        ),
    )
    tier: str | None = Field(
        default=None,
        description=(
            "The job's priority tier (realtime, standard, economy: its jobs topic); null for"
            " a job that planned no image, and in events from before it was carried."
        ),
    )


class JobCancelledData(Contract):
    reason: str = "cancelled by user"
    released_usd: float = 0.0


class BudgetAlertData(Contract):
    scope: str
    threshold_percent: int
    spent_usd: float
    budget_usd: float


# --- envelopes --------------------------------------------------------------------------


class EventBase(Message):
    """CloudEvents attributes plus job id, user id and a per-job sequence number.

    `seq` is assigned by the gateway's projection, the one reader that sees a job's
    events in partition order; producers leave it empty.
    """

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    time: datetime = Field(default_factory=utcnow)
    subject: str
    job_id: str | None = None
    user_id: str | None = None
    seq: int | None = None
    traceparent: str | None = None


class GenerationQueued(EventBase):
    type: Literal["generation_queued"] = "generation_queued"
    data: GenerationQueuedData


class GenerationStarted(EventBase):
    type: Literal["generation_started"] = "generation_started"
    data: GenerationStartedData


class GenerationProgress(EventBase):
    type: Literal["generation_progress"] = "generation_progress"
    data: GenerationProgressData


class GenerationCompleted(EventBase):
    type: Literal["generation_completed"] = "generation_completed"
    data: GenerationCompletedData


class GenerationFailed(EventBase):
    type: Literal["generation_failed"] = "generation_failed"
    data: GenerationFailedData


class ImageStored(EventBase):
    type: Literal["image_stored"] = "image_stored"
    data: ImageStoredData


class PackCompleted(EventBase):
    type: Literal["pack_completed"] = "pack_completed"
    data: PackCompletedData


class JobCancelled(EventBase):
    type: Literal["job_cancelled"] = "job_cancelled"
    data: JobCancelledData


class BudgetAlert(EventBase):
    type: Literal["budget_alert"] = "budget_alert"
    data: BudgetAlertData


class ConsistencyFlagged(EventBase):
    type: Literal["consistency_flagged"] = "consistency_flagged"
    data: ConsistencyFlaggedData


class ImageDeleted(EventBase):
    type: Literal["image_deleted"] = "image_deleted"
    data: ImageDeletedData


class ImageReviewed(EventBase):
    type: Literal["image_reviewed"] = "image_reviewed"
    data: ImageReviewedData


class JobProgress(EventBase):
    type: Literal["job_progress"] = "job_progress"
    data: JobProgressData


EventT = TypeVar("EventT", bound=EventBase)


def image_event(
    kind: type[EventT],
    image: ImageIdentity,
    *parts: object,
    data: Contract,
    source: str = "",
    id_type: str | None = None,
) -> EventT:
    """An event of class `kind` about one image, its envelope built from the image: the id
    from the event's type (or `id_type`), the job id, image index and `parts`; the subject
    names the image. An empty `source` is stamped by the emitter."""
    event_type = id_type or str(kind.model_fields["type"].default)
    return kind(**{**image_envelope(image, event_type, *parts), "source": source}, data=data)


def job_event(
    kind: type[EventT],
    job_id: str,
    user_id: str,
    *parts: object,
    data: Contract,
    source: str = "",
) -> EventT:
    """An event of class `kind` about a whole job: its id from the event's type, the job id
    and `parts`; the subject names the job. An empty `source` is stamped by the emitter."""
    event_type = str(kind.model_fields["type"].default)
    return kind(
        id=event_id(event_type, job_id, *parts),
        source=source,
        subject=f"jobs/{job_id}",
        job_id=job_id,
        user_id=user_id,
        data=data,
    )


Event = Annotated[
    GenerationQueued
    | GenerationStarted
    | GenerationProgress
    | GenerationCompleted
    | GenerationFailed
    | ImageStored
    | PackCompleted
    | JobCancelled
    | BudgetAlert
    | ConsistencyFlagged
    | ImageDeleted
    | ImageReviewed
    | JobProgress,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
