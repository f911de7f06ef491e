"""Overdue attempts: an attempt that went silent is failed as retryable and retried.

Once the generator says an attempt started, it has `attempt_run_deadline_s` to complete,
and a completed image has `attempt_store_deadline_s` to be stored (`job_images.due_at`,
with `awaiting` naming the outcome). An attempt past its deadline is failed here as
retryable (`AttemptOverdue`, announced as a non-final `generation_failed`) and takes the
usual retry path. So a message lost downstream (a broker that acknowledged a write it then
lost; a record dead-lettered on its way) costs a retry, not the image and its job. An
attempt still waiting in its tier's queue has no deadline: a backlog is not a fault.
Outcomes of the overdue attempt that arrive after all are harmless: storage keeps one copy
per image, and the ledger books one cost (`Ledger.settle_stored`); an image that ended
unstored was named to storage in a `discard_image` request, so its late attempt is not
stored after the job's last word (`JobBook.discard`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

from schemas.events import (
    ErrorType,
    GenerationFailed,
    GenerationFailedData,
    image_event,
    image_facts,
)
from schemas.jobs import GenerateImage
from schemas.topics import TopicNames
from services.scheduler.dispatch import Dispatcher
from services.scheduler.jobs import JobBook
from services.scheduler.outbox import SOURCE, stage_event
from services.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)
AWAITING_COMPLETED = "generation_completed"
AWAITING_STORED = "image_stored"

AttemptFailed = Callable[
    [asyncpg.Connection, asyncpg.Record, asyncpg.Record, GenerationFailedData], Awaitable[None]
]
"""`Retries.failed`: what becomes of a failed attempt (job and image rows locked)."""


class OverdueAttempts:
    """Fails dispatched attempts past their deadline."""

    def __init__(
        self,
        settings: SchedulerSettings,
        topics: TopicNames,
        dispatcher: Dispatcher,
        book: JobBook,
        failed: AttemptFailed,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._dispatcher = dispatcher
        self._book = book
        self._failed = failed

    async def fail(self, conn: asyncpg.Connection, job_id: str, index: int) -> bool:
        """Fail the image's attempt if it is still dispatched and past its deadline (the job
        and the image locked here, in that order); whether it was."""
        job = await self._dispatcher.lock_job(conn, job_id, skip_locked=True)
        if job is None or job["status"] not in ("running", "cancelling"):
            return False
        row = await conn.fetchrow(
            "SELECT *, now() - due_at AS late FROM job_images WHERE job_id = $1"
            " AND image_index = $2 AND status = 'dispatched' AND due_at <= now() FOR UPDATE",
            job_id,
            index,
        )
        if row is None:
            return False
        msg = GenerateImage.model_validate_json(row["message"])
        img = msg.image
        awaiting = row["awaiting"] or "an outcome"
        deadline = (
            self._settings.attempt_store_deadline_s
            if awaiting == AWAITING_STORED
            else self._settings.attempt_run_deadline_s
        )
        data = GenerationFailedData(
            image_id=img.image_id,
            image_index=img.image_index,
            attempt=img.attempt,
            error_type=ErrorType.ATTEMPT_OVERDUE.value,
            error=f"attempt {img.attempt}: no {awaiting} within {deadline:g} s",
            retryable=True,
            final=False,
            provider=msg.provider or "",
            model=msg.model or "",
            **image_facts(img),
        )
        await stage_event(
            conn,
            self._topics.events,
            image_event(
                GenerationFailed,
                img,
                img.attempt,
                source=SOURCE,
                id_type="attempt_overdue",
                data=data,
            ),
        )
        log.warning(
            "event=attempt_overdue job_id=%s index=%d attempt=%d awaiting=%s late_s=%.1f",
            img.job_id,
            img.image_index,
            img.attempt,
            awaiting,
            row["late"].total_seconds(),
        )
        if job["status"] == "cancelling":  # nothing is retried for a cancelled job
            await self._book.drop_in_flight(conn, job, row["image_index"], row["phase"])
            return True
        await self._failed(conn, job, row, data)
        return True
