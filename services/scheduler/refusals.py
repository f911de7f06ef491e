"""Refusals for content policy: the provider's, final at once; ours, re-drawn once.

A content-policy refusal by the provider (error_type ContentPolicyViolation: its safety
system refused the prompt or a reference image) is final at once: the prompt is at fault,
so it is neither retried nor sent to the next provider to be paid for again, and the job's
reason says so. A refusal of the generated image by our own safety check (postprocess;
marked retryable) is re-drawn once with a new seed on the same offer; a second refusal of
the image is final.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from schemas.events import GenerationFailedData
from schemas.jobs import GenerateImage
from services.scheduler.attempts import next_attempt
from services.scheduler.give_up import GiveUp

log = logging.getLogger(__name__)
CONTENT_POLICY_REASON = "content_policy_violation"
"""The job's `reason_code` when one of its images was refused for content policy."""
SAFETY_REDRAWS = 1
"""New-seed re-draws of an image the output-safety check refused, before it fails."""
_SEED_STEP = 0x9E3779B1  # an odd step: every re-draw gets a seed no earlier attempt had


@dataclass(frozen=True)
class Refused:
    """One refused attempt: the job's and the image's rows (locked by the caller), the
    attempt's message and its failure, inside the caller's transaction on `conn`."""

    conn: asyncpg.Connection
    job: asyncpg.Record
    row: asyncpg.Record
    msg: GenerateImage
    data: GenerationFailedData


class Refusals:
    """Decides what becomes of an image refused for content policy."""

    def __init__(self, give_up: GiveUp) -> None:
        self._give_up = give_up

    async def refused(
        self,
        conn: asyncpg.Connection,
        job: asyncpg.Record,
        row: asyncpg.Record,
        msg: GenerateImage,
        data: GenerationFailedData,
    ) -> None:
        """The attempt failed with ContentPolicyViolation: re-draw it or give the image up."""
        refused = Refused(conn, job, row, msg, data)
        if data.retryable and row["safety_redraws"] < SAFETY_REDRAWS:
            await self._redraw(refused)
        else:
            await self._final(refused)

    async def _redraw(self, refused: Refused) -> None:
        """Our safety check refused the image itself: draw it again now with a new seed."""
        redraw = next_attempt(refused.msg)
        redraw = redraw.model_copy(update={"seed": (refused.msg.seed + _SEED_STEP) % 2**32})
        await refused.conn.execute(
            "UPDATE job_images SET status = 'retry_wait', due_at = now(),"
            " safety_redraws = safety_redraws + 1, attempt = $3, message = $4, error = $5,"
            " updated_at = now() WHERE job_id = $1 AND image_index = $2",
            refused.job["job_id"],
            refused.row["image_index"],
            redraw.image.attempt,
            redraw.model_dump_json(),
            refused.data.error,
        )
        log.warning(
            "event=unsafe_output_redraw job_id=%s index=%d attempt=%d seed=%d",
            refused.job["job_id"],
            refused.row["image_index"],
            redraw.image.attempt,
            redraw.seed,
        )

    async def _final(self, refused: Refused) -> None:
        """A safety-system refusal: the image fails now and names it, as does its job."""
        index = refused.row["image_index"]
        # Noted on the job now, said by its terminal event (`JobBook.image_settled`); the
        # first refused image of a pack names the reason.
        await refused.conn.execute(
            "UPDATE jobs SET reason_code = coalesce(reason_code, $2),"
            " reason = coalesce(reason, $3) WHERE job_id = $1",
            refused.job["job_id"],
            CONTENT_POLICY_REASON,
            f"image {index} refused for content policy (not retried, not sent to another"
            f" provider): {refused.data.error}"[:500],
        )
        log.warning(
            "event=content_refused job_id=%s index=%d attempt=%d provider=%s",
            refused.job["job_id"],
            index,
            refused.msg.image.attempt,
            refused.msg.provider,
        )
        await self._give_up.image(
            refused.conn,
            refused.job,
            refused.row,
            refused.msg,
            refused.data.error_type,
            refused.data.error,
        )
