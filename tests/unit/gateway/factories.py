"""Events as the scheduler, generator and storage would emit them."""

from __future__ import annotations

import json
from typing import Any

from schemas.events import EventBase as Event
from schemas.events import (
    GenerationFailed,
    GenerationFailedData,
    GenerationProgress,
    GenerationProgressData,
    GenerationQueued,
    GenerationQueuedData,
    GenerationStarted,
    GenerationStartedData,
    ImageStored,
    ImageStoredData,
    JobCancelled,
    JobCancelledData,
    JobStatus,
    PackCompleted,
    PackCompletedData,
    StoredRendition,
    event_id,
)


def _envelope(kind: str, job: str, user: str | None, *parts: object) -> dict[str, Any]:
    return {
        "id": event_id(kind, job, *parts),
        "source": "tests",
        "subject": f"jobs/{job}",
        "job_id": job,
        "user_id": user,
    }


def image_id(job: str, index: int) -> str:
    return f"{job}-{index}"


def queued(job: str, user: str, index: int, count: int) -> GenerationQueued:
    data = GenerationQueuedData(
        image_id=image_id(job, index),
        image_index=index,
        image_count=count,
        character_id="char",
        tier="realtime",
    )
    return GenerationQueued(**_envelope("generation_queued", job, user, index), data=data)


def started(job: str, user: str, index: int) -> GenerationStarted:
    data = GenerationStartedData(
        image_id=image_id(job, index), image_index=index, backend="demo", model="dcgan"
    )
    return GenerationStarted(**_envelope("generation_started", job, user, index), data=data)


def progress(job: str, user: str, index: int, step: int) -> GenerationProgress:
    data = GenerationProgressData(
        image_id=image_id(job, index), image_index=index, step=step, total_steps=4
    )
    return GenerationProgress(**_envelope("generation_progress", job, user, index, step), data=data)


def stored(job: str, user: str | None, index: int, *, demo: bool = True) -> ImageStored:
    def rendition(name: str, size: int) -> StoredRendition:
        return StoredRendition(
            name=name,
            key=f"images/{user}/{job}/{index}/{name}.png",
            size_bytes=size * 10,
            width=size,
            height=size,
            format="png",
            content_type="image/png",
        )

    data = ImageStoredData(
        image_id=image_id(job, index),
        image_index=index,
        character_id="char",
        kind="pack",
        version=1,
        size_bytes=5120,
        width=512,
        height=512,
        renditions=[rendition("display", 512), rendition("thumbnail", 128)],
        seed=1234 + index,
        model="dcgan-digiface",
        backend="demo",
        provider="local",
        demo=demo,
        cost_usd=0.0,
    )
    return ImageStored(**_envelope("image_stored", job, user, index), data=data)


def failed(job: str, user: str, index: int, *, final: bool, attempt: int = 1) -> GenerationFailed:
    data = GenerationFailedData(
        image_id=image_id(job, index),
        image_index=index,
        attempt=attempt,
        error_type="Boom",
        error="it broke",
        retryable=not final,
        final=final,
    )
    return GenerationFailed(**_envelope("generation_failed", job, user, index, attempt), data=data)


def pack_completed(
    job: str, user: str, count: int, done: int, failures: int, status: JobStatus
) -> PackCompleted:
    data = PackCompletedData(
        status=status,
        image_count=count,
        completed_count=done,
        failed_count=failures,
        total_duration_ms=1000,
    )
    return PackCompleted(**_envelope("pack_completed", job, user), data=data)


def cancelled(job: str, user: str) -> JobCancelled:
    return JobCancelled(**_envelope("job_cancelled", job, user), data=JobCancelledData())


def pack(job: str, user: str, count: int) -> list[Event]:
    """A whole successful pack, in the order the services would emit it."""
    events: list[Event] = [queued(job, user, i, count) for i in range(count)]
    for i in range(count):
        events += [started(job, user, i), stored(job, user, i)]
    events.append(pack_completed(job, user, count, count, 0, JobStatus.COMPLETED))
    return events


def parse_sse(text: str) -> list[dict[str, Any]]:
    """SSE messages (pings and comments dropped) as {id, event, data}."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            messages.append(fields)
    return messages
