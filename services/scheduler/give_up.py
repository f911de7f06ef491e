"""Giving an image up: it fails alone, and nothing of it is stored after its job's last word.

When an image's chain is exhausted (or it was refused, or its variation found no budget)
it fails with one `generation_failed` final=true and its reservation released; its job
then ends partially (or failed when nothing was stored). Storage is told in a
`discard_image` request (`JobBook.discard`), so a late attempt of the image, an overdue
one say, is not stored after the job's terminal event.
"""

from __future__ import annotations

import logging

import asyncpg

from schemas.events import GenerationFailed, GenerationFailedData, image_event, image_facts
from schemas.jobs import GenerateImage
from schemas.topics import TopicNames
from services.scheduler.jobs import JobBook
from services.scheduler.ledger import Ledger
from services.scheduler.outbox import SOURCE, stage_event

log = logging.getLogger(__name__)


class GiveUp:
    """Fails one image for good."""

    def __init__(self, topics: TopicNames, ledger: Ledger, book: JobBook) -> None:
        self._topics = topics
        self._ledger = ledger
        self._book = book

    async def image(
        self,
        conn: asyncpg.Connection,
        job: asyncpg.Record,
        row: asyncpg.Record,
        msg: GenerateImage,
        error_type: str,
        error: str,
    ) -> None:
        """The image fails alone: release its reservation, say so once, move the job on."""
        img = msg.image
        await self._ledger.release(conn, job["job_id"], row["image_index"])
        await self._book.discard(conn, msg, f"failed: {error_type}")
        await conn.execute(
            "UPDATE job_images SET status = 'failed', error = $3, due_at = NULL,"
            " updated_at = now() WHERE job_id = $1 AND image_index = $2",
            job["job_id"],
            row["image_index"],
            error,
        )
        await stage_event(
            conn,
            self._topics.events,
            image_event(
                GenerationFailed,
                img,
                "final",
                source=SOURCE,
                data=GenerationFailedData(
                    image_id=img.image_id,
                    image_index=img.image_index,
                    attempt=img.attempt,
                    error_type=error_type,
                    error=error[:500],
                    retryable=False,
                    final=True,
                    provider=msg.provider or "",
                    model=msg.model or "",
                    **image_facts(img),
                ),
            ),
        )
        log.warning(
            "event=image_failed job_id=%s index=%d attempts=%d error=%r",
            img.job_id,
            img.image_index,
            img.attempt,
            error,
        )
        await self._book.image_settled(conn, job, row["phase"])
