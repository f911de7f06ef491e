"""`job_event`: a whole job's event built from its parts, as the scheduler built it by hand."""

from __future__ import annotations

from schemas.events import (
    JobCancelled,
    JobCancelledData,
    JobProgress,
    JobProgressData,
    JobStatus,
    PackCompleted,
    PackCompletedData,
    event_id,
    job_event,
)

PROGRESS = JobProgressData(total=5, completed=2, failed=1, running=1, phase="images")


def test_the_envelope_names_the_job_and_the_id_comes_from_type_job_and_parts() -> None:
    event = job_event(JobProgress, "j", "u", 2, 1, source="imagegen/scheduler", data=PROGRESS)
    by_hand = JobProgress(
        id=event_id("job_progress", "j", 2, 1),
        source="imagegen/scheduler",
        subject="jobs/j",
        job_id="j",
        user_id="u",
        data=PROGRESS,
        time=event.time,
    )
    assert event == by_hand


def test_a_job_with_one_event_of_a_type_has_its_id_from_type_and_job_only() -> None:
    ended = job_event(
        PackCompleted,
        "j",
        "u",
        data=PackCompletedData(
            status=JobStatus.COMPLETED,
            image_count=1,
            completed_count=1,
            failed_count=0,
            total_duration_ms=5,
        ),
    )
    cancelled = job_event(
        JobCancelled, "j", "u", data=JobCancelledData(reason="r", released_usd=0.0)
    )
    assert ended.id == event_id("pack_completed", "j")
    assert cancelled.id == event_id("job_cancelled", "j")
    assert (ended.subject, ended.source, cancelled.subject) == ("jobs/j", "", "jobs/j")
    assert ended.id != cancelled.id
