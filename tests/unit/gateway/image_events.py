"""Events about named images (ids as the gateway hands them out), as the services emit them."""

from __future__ import annotations

from schemas.events import (
    ConsistencyFlagged,
    ConsistencyFlaggedData,
    GenerationCompleted,
    GenerationCompletedData,
    GenerationFailed,
    GenerationFailedData,
    GenerationQueued,
    GenerationQueuedData,
    GenerationStarted,
    GenerationStartedData,
    ImageDeleted,
    ImageDeletedData,
    ImageReviewed,
    ImageReviewedData,
    ImageStored,
    ImageStoredData,
    JobProgress,
    JobProgressData,
    JobStatus,
    PackCompleted,
    PackCompletedData,
    StoredRendition,
    event_id,
)


def _env(kind: str, job: str | None, user: str, *parts: object) -> dict[str, object]:
    return {
        "id": event_id(kind, job, *parts),
        "source": "tests",
        "subject": f"jobs/{job}",
        "job_id": job,
        "user_id": user,
    }


def queued(
    job: str,
    user: str,
    image_id: str,
    *,
    index: int = 0,
    count: int = 1,
    kind: str = "pack",
    version: int = 1,
    character: str = "char",
    story: str | None = None,
    page: int | None = None,
) -> GenerationQueued:
    data = GenerationQueuedData(
        image_id=image_id,
        image_index=index,
        image_count=count,
        character_id=character,
        tier="realtime",
        kind=kind,
        version=version,
        story_id=story,
        page_number=page,
    )
    return GenerationQueued(**_env("generation_queued", job, user, image_id, version), data=data)


def started(job: str, user: str, image_id: str, index: int = 0) -> GenerationStarted:
    data = GenerationStartedData(image_id=image_id, image_index=index, backend="demo", model="m")
    return GenerationStarted(**_env("generation_started", job, user, image_id), data=data)


def completed(job: str, user: str, image_id: str, duration_ms: int) -> GenerationCompleted:
    data = GenerationCompletedData(
        image_id=image_id,
        image_index=0,
        duration_ms=duration_ms,
        backend="demo",
        model="m",
        seed=1,
        cost_usd=0.01,
    )
    return GenerationCompleted(**_env("generation_completed", job, user, image_id), data=data)


def stored(
    job: str,
    user: str,
    image_id: str,
    *,
    index: int = 0,
    version: int = 1,
    kind: str = "pack",
    character: str = "char",
    story: str | None = None,
    page: int | None = None,
    cost: float = 0.02,
    score: float | None = 0.91,
    flagged: bool = False,
    style: str = "",
    prompt: str = "",
    negative_prompt: str = "",
    scene: str = "",
    scene_source: str = "",
    quality: float | None = None,
) -> ImageStored:
    renditions = [
        StoredRendition(
            name=name,
            key=f"images/{user}/{image_id}/v{version}/{name}.png",
            size_bytes=size * 10,
            width=size,
            height=size,
            format="png",
            content_type="image/png",
        )
        for name, size in (("display", 512), ("thumbnail", 128))
    ]
    data = ImageStoredData(
        image_id=image_id,
        image_index=index,
        character_id=character,
        kind=kind,
        version=version,
        size_bytes=5120,
        width=512,
        height=512,
        renditions=renditions,
        seed=99 + version,
        model="dcgan",
        backend="demo",
        provider="demo",
        demo=True,
        cost_usd=cost,
        consistency_score=score,
        flagged=flagged,
        story_id=story,
        page_number=page,
        style=style,
        prompt=prompt,
        negative_prompt=negative_prompt,
        scene_description=scene,
        scene_source=scene_source,
        quality_score=quality,
    )
    return ImageStored(**_env("image_stored", job, user, image_id, version), data=data)


def failed(
    job: str, user: str, image_id: str, *, final: bool, attempt: int = 1
) -> GenerationFailed:
    data = GenerationFailedData(
        image_id=image_id,
        image_index=0,
        attempt=attempt,
        error_type="Boom",
        error="broke",
        retryable=not final,
        final=final,
    )
    parts = (image_id, attempt, final)
    return GenerationFailed(**_env("generation_failed", job, user, *parts), data=data)


def flagged(
    job: str, user: str, image_id: str, *, variation: int, final: bool, score: float = 0.4
) -> ConsistencyFlagged:
    data = ConsistencyFlaggedData(
        image_id=image_id,
        image_index=0,
        variation=variation,
        score=score,
        threshold=0.6,
        final=final,
    )
    return ConsistencyFlagged(
        **_env("consistency_flagged", job, user, image_id, variation), data=data
    )


def progress(job: str, user: str, total: int, done: int, running: int, phase: str) -> JobProgress:
    data = JobProgressData(total=total, completed=done, failed=0, running=running, phase=phase)
    return JobProgress(**_env("job_progress", job, user, done, running, phase), data=data)


def finished(
    job: str,
    user: str,
    count: int,
    done: int,
    status: JobStatus,
    *,
    cost: float = 0.0,
    reason_code: str | None = None,
    reason: str | None = None,
) -> PackCompleted:
    data = PackCompletedData(
        status=status,
        image_count=count,
        completed_count=done,
        failed_count=count - done,
        total_duration_ms=1000,
        reason_code=reason_code,
        reason=reason,
        cost_usd=cost,
    )
    return PackCompleted(**_env("pack_completed", job, user), data=data)


def deleted(user: str, image_id: str, versions: list[int]) -> ImageDeleted:
    data = ImageDeletedData(image_id=image_id, versions=versions)
    env = _env("image_deleted", None, user, image_id, *versions)
    env["subject"] = f"images/{image_id}"
    return ImageDeleted(**env, data=data)


def reviewed(job: str, user: str, image_id: str, version: int, decision: str) -> ImageReviewed:
    data = ImageReviewedData(image_id=image_id, version=version, decision=decision)
    return ImageReviewed(
        **_env("image_reviewed", job, user, image_id, version, decision), data=data
    )
