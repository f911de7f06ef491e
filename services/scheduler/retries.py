"""Failed attempts: retry with backoff, fail over to the next offer, or give the image up.

Per DECISIONS.md #2: up to `max_attempts` attempts per provider, the delay doubling from
`retry_backoff_s` (capped); the due time lives in `job_images.due_at` and the `Ticker`
dispatches due retries (`FOR UPDATE SKIP LOCKED`, so instances share the work and nothing
waits on a busy job). A permanent failure (retryable=false, a provider the generator does
not run) skips the remaining attempts of that provider. A content-policy refusal
(error_type ContentPolicyViolation: the provider's safety system refused the prompt or a
reference image) is final at once: the prompt is at fault, so it is neither retried nor
sent to the next provider to be paid for again, and the job's reason says so. A refusal of
the generated image by our own safety check (postprocess; marked retryable) is re-drawn
once with a new seed on the same offer; a second refusal of the image is final. When the
chain is exhausted the image fails alone with one `generation_failed` final=true and its
reservation released; its job then ends partially (or failed when nothing was stored).
`attempt` grows across providers and variations, so every attempt of an image has its
own ids.

Overdue attempts: once the generator says an attempt started, it has
`attempt_run_deadline_s` to complete, and a completed image has `attempt_store_deadline_s`
to be stored (`job_images.due_at`, with `awaiting` naming the outcome). An attempt past its
deadline is failed here as retryable (`AttemptOverdue`, announced as a non-final
`generation_failed`) and takes the usual retry path. So a message lost downstream (a broker
that acknowledged a write it then lost; a record dead-lettered on its way) costs a retry,
not the image and its job. An attempt still waiting in its tier's queue has no deadline: a
backlog is not a fault. Outcomes of the overdue attempt that arrive after all are harmless:
storage keeps one copy per image, and the ledger books one cost (`Ledger.settle_stored`);
an image that ended unstored was named to storage in a `discard_image` request, so its
late attempt is not stored after the job's last word (`JobBook.discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import date, timedelta

import asyncpg

from imagegen.errors import RetryableError
from schemas.events import (
    ErrorType,
    GenerationFailed,
    GenerationFailedData,
    event_id,
    image_facts,
)
from schemas.jobs import GenerateImage
from schemas.requests import UserTier
from schemas.topics import TopicNames
from services.scheduler.dispatch import Dispatcher
from services.scheduler.jobs import JobBook
from services.scheduler.ledger import Hold, Ledger, Slot
from services.scheduler.outbox import SOURCE, stage_event
from services.scheduler.planning import OfferChoice, on_offer
from services.scheduler.provider_health import ProviderHealth
from services.scheduler.rerolls import vary as vary_job
from services.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)
CONTENT_POLICY_REASON = "content_policy_violation"
"""The job's `reason_code` when one of its images was refused for content policy."""
AWAITING_COMPLETED = "generation_completed"
AWAITING_STORED = "image_stored"


def backoff(settings: SchedulerSettings, provider_attempt: int) -> float:
    """Seconds before attempt `provider_attempt + 1` on the same provider."""
    delay = settings.retry_backoff_s * 2 ** (provider_attempt - 1)
    return float(min(delay, settings.retry_backoff_max_s))


SAFETY_REDRAWS = 1
"""New-seed re-draws of an image the output-safety check refused, before it fails."""
_SEED_STEP = 0x9E3779B1  # an odd step: every re-draw gets a seed no earlier attempt had


def next_attempt(job: GenerateImage) -> GenerateImage:
    return job.model_copy(
        update={"image": job.image.model_copy(update={"attempt": job.image.attempt + 1})}
    )


class Retries:
    def __init__(
        self,
        settings: SchedulerSettings,
        topics: TopicNames,
        ledger: Ledger,
        dispatcher: Dispatcher,
        book: JobBook,
        health: ProviderHealth | None = None,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._ledger = ledger
        self._dispatcher = dispatcher
        self._book = book
        self._health = health or ProviderHealth(0, 0)

    async def failed(
        self,
        conn: asyncpg.Connection,
        job: asyncpg.Record,
        row: asyncpg.Record,
        data: GenerationFailedData,
    ) -> None:
        """One attempt of a dispatched image failed (the caller checked it is the current one)."""
        msg = GenerateImage.model_validate_json(row["message"])
        if data.error_type == ErrorType.CONTENT_POLICY_VIOLATION:
            if data.retryable and row["safety_redraws"] < SAFETY_REDRAWS:
                await self._redraw_refused(conn, job, row, msg, data)
            else:
                await self._refused(conn, job, row, msg, data)
            return
        retryable = data.retryable and data.error_type != ErrorType.CANCELLED
        chain = [OfferChoice.from_json(o) for o in _json_list(row["offers"])]
        nxt = row["offer_index"] + 1
        # The rest of the chain, providers in cool-down last; a cooling provider gets no
        # more attempts of its own while a healthy one is left to fail over to.
        rest = self._health.order(chain[nxt:], lambda o: o.provider)
        leave = self._health.cooling(msg.provider or "") and any(
            not self._health.cooling(o.provider) for o in rest
        )
        if retryable and row["provider_attempt"] < self._settings.max_attempts and not leave:
            delay = backoff(self._settings, row["provider_attempt"])
            await conn.execute(
                "UPDATE job_images SET status = 'retry_wait', due_at = now() + $3,"
                " provider_attempt = provider_attempt + 1, attempt = $4, message = $5,"
                " error = $6, updated_at = now() WHERE job_id = $1 AND image_index = $2",
                job["job_id"],
                row["image_index"],
                timedelta(seconds=delay),
                msg.image.attempt + 1,
                next_attempt(msg).model_dump_json(),
                data.error,
            )
            log.info(
                "event=retry_scheduled job_id=%s index=%d attempt=%d delay_s=%.3f",
                job["job_id"],
                row["image_index"],
                msg.image.attempt + 1,
                delay,
            )
            return
        if nxt < len(chain):
            offer = rest[0]
            if rest != chain[nxt:]:
                await conn.execute(
                    "UPDATE job_images SET offers = $3 WHERE job_id = $1 AND image_index = $2",
                    job["job_id"],
                    row["image_index"],
                    json.dumps([o.to_json() for o in [*chain[:nxt], *rest]]),
                )
            slot = Slot(job["job_id"], row["image_index"], msg.image.variation)
            refusal = await self._ledger.adjust(
                conn, slot, UserTier(job["tier"]), offer.provider, offer.model, offer.estimate
            )
            if refusal is None:
                await conn.execute(
                    "UPDATE job_images SET offer_index = $3, provider_attempt = 1, error = $4"
                    " WHERE job_id = $1 AND image_index = $2",
                    job["job_id"],
                    row["image_index"],
                    nxt,
                    data.error,
                )
                log.info(
                    "event=failover job_id=%s index=%d from=%s to=%s",
                    job["job_id"],
                    row["image_index"],
                    msg.provider,
                    offer.provider,
                )
                await self._dispatcher.dispatch(conn, next_attempt(on_offer(msg, offer)))
                return
            data = data.model_copy(update={"error": f"{data.error}; failover: {refusal.reason}"})
        await self.give_up(conn, job, row, msg, data.error_type, data.error)

    async def overdue(self, conn: asyncpg.Connection, job_id: str, index: int) -> bool:
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
            GenerationFailed(
                id=event_id("attempt_overdue", img.job_id, img.image_index, img.attempt),
                source=SOURCE,
                subject=f"jobs/{img.job_id}/images/{img.image_index}",
                job_id=img.job_id,
                user_id=img.user_id,
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
        await self.failed(conn, job, row, data)
        return True

    async def _redraw_refused(
        self,
        conn: asyncpg.Connection,
        job: asyncpg.Record,
        row: asyncpg.Record,
        msg: GenerateImage,
        data: GenerationFailedData,
    ) -> None:
        """Our safety check refused the image itself: draw it again now with a new seed."""
        redraw = next_attempt(msg)
        redraw = redraw.model_copy(update={"seed": (msg.seed + _SEED_STEP) % 2**32})
        await conn.execute(
            "UPDATE job_images SET status = 'retry_wait', due_at = now(),"
            " safety_redraws = safety_redraws + 1, attempt = $3, message = $4, error = $5,"
            " updated_at = now() WHERE job_id = $1 AND image_index = $2",
            job["job_id"],
            row["image_index"],
            redraw.image.attempt,
            redraw.model_dump_json(),
            data.error,
        )
        log.warning(
            "event=unsafe_output_redraw job_id=%s index=%d attempt=%d seed=%d",
            job["job_id"],
            row["image_index"],
            redraw.image.attempt,
            redraw.seed,
        )

    async def _refused(
        self,
        conn: asyncpg.Connection,
        job: asyncpg.Record,
        row: asyncpg.Record,
        msg: GenerateImage,
        data: GenerationFailedData,
    ) -> None:
        """A safety-system refusal: the image fails now and names it, as does its job."""
        index = row["image_index"]
        # Noted on the job now, said by its terminal event (`JobBook.image_settled`); the
        # first refused image of a pack names the reason.
        await conn.execute(
            "UPDATE jobs SET reason_code = coalesce(reason_code, $2),"
            " reason = coalesce(reason, $3) WHERE job_id = $1",
            job["job_id"],
            CONTENT_POLICY_REASON,
            f"image {index} refused for content policy (not retried, not sent to another"
            f" provider): {data.error}"[:500],
        )
        log.warning(
            "event=content_refused job_id=%s index=%d attempt=%d provider=%s",
            job["job_id"],
            index,
            msg.image.attempt,
            msg.provider,
        )
        await self.give_up(conn, job, row, msg, data.error_type, data.error)

    async def give_up(
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
            GenerationFailed(
                id=event_id("generation_failed", img.job_id, img.image_index, "final"),
                source=SOURCE,
                subject=f"jobs/{img.job_id}/images/{img.image_index}",
                job_id=img.job_id,
                user_id=img.user_id,
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

    async def vary(
        self, conn: asyncpg.Connection, job: asyncpg.Record, row: asyncpg.Record, variation: int
    ) -> None:
        """Consistency loop: draw the image again with a new seed (DECISIONS.md #9)."""
        msg = GenerateImage.model_validate_json(row["message"])
        varied = vary_job(msg, variation)
        # Attempts keep counting up so the new draw's ids never meet an earlier attempt's.
        varied = varied.model_copy(
            update={"image": varied.image.model_copy(update={"attempt": msg.image.attempt + 1})}
        )
        chain = [OfferChoice.from_json(o) for o in _json_list(row["offers"])]
        offer = chain[row["offer_index"]]
        refusal = await self._ledger.reserve(
            conn,
            await _job_day(conn, job["job_id"]),
            job["user_id"],
            UserTier(job["tier"]),
            [
                Hold(
                    Slot(job["job_id"], row["image_index"], variation),
                    varied.seed,
                    offer.provider,
                    offer.model,
                    offer.estimate,
                )
            ],
        )
        if refusal is not None:
            await self.give_up(conn, job, row, msg, refusal.reason_code, refusal.reason)
            return
        await conn.execute(
            "UPDATE job_images SET provider_attempt = 1 WHERE job_id = $1 AND image_index = $2",
            job["job_id"],
            row["image_index"],
        )
        await self._dispatcher.dispatch(conn, varied)


async def _job_day(conn: asyncpg.Connection, job_id: str) -> date:
    day: date = await conn.fetchval("SELECT budget_day FROM jobs WHERE job_id = $1", job_id)
    return day


def _json_list(raw: object) -> list[dict[str, str]]:
    value = json.loads(raw) if isinstance(raw, str) else raw
    assert isinstance(value, list)
    return value


class Ticker:
    """Dispatches due retries; every instance runs one, sharing rows with SKIP LOCKED."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dispatcher: Dispatcher,
        *,
        interval_s: float,
        on_staged: Callable[[], None],
        overdue: Callable[[asyncpg.Connection, str, int], Awaitable[bool]] | None = None,
        batch: int = 100,
        sweep_every: int = 10,
    ) -> None:
        self._overdue = overdue
        self._sweep_every = sweep_every
        self._pool = pool
        self._dispatcher = dispatcher
        self._interval = interval_s
        self._on_staged = on_staged
        self._batch = batch
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        rounds = 0
        while not self._stopping.is_set():
            try:
                while await self.tick() >= self._batch:
                    pass
                rounds += 1
                if rounds % self._sweep_every == 0:
                    await self.expire()
                    await self.sweep()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RetryableError) as exc:
                log.warning("event=ticker_retry error=%r", str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def tick(self) -> int:
        """Dispatch the retries that are due now; how many went."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT i.message FROM job_images i JOIN jobs j USING (job_id)"
                " WHERE i.status = 'retry_wait' AND i.due_at <= now() AND j.status = 'running'"
                " ORDER BY i.due_at LIMIT $1 FOR UPDATE OF i, j SKIP LOCKED",
                self._batch,
            )
            for row in rows:
                await self._dispatcher.dispatch(
                    conn, GenerateImage.model_validate_json(row["message"])
                )
        if rows:
            self._on_staged()
        return len(rows)

    async def expire(self) -> int:
        """Fail the attempts that passed their deadline (`Retries.overdue`); how many."""
        if self._overdue is None:
            return 0
        async with self._pool.acquire() as conn:
            due = await conn.fetch(
                "SELECT i.job_id, i.image_index FROM job_images i JOIN jobs j USING (job_id)"
                " WHERE i.status = 'dispatched' AND i.due_at <= now()"
                " AND j.status IN ('running', 'cancelling')"
                " ORDER BY i.due_at LIMIT $1",
                self._batch,
            )
            expired = 0
            for row in due:
                async with conn.transaction():
                    expired += await self._overdue(conn, row["job_id"], row["image_index"])
        if expired:
            self._on_staged()
        return expired

    async def sweep(self) -> None:
        """Safety net: slots and story places that a skipped lock left unused are used now."""
        async with self._pool.acquire() as conn, conn.transaction():
            users = await conn.fetch(
                "SELECT DISTINCT user_id, tier FROM jobs WHERE status = 'queued' LIMIT 100"
            )
            for u in users:
                await self._dispatcher.activate_waiting(conn, u["user_id"], u["tier"])
            running = await conn.fetch(
                "SELECT DISTINCT i.job_id FROM job_images i JOIN jobs j USING (job_id)"
                " WHERE i.status = 'waiting' AND j.status = 'running' LIMIT 100"
            )
            for r in running:
                job = await self._dispatcher.lock_job(conn, r["job_id"], skip_locked=True)
                if job is not None:
                    await self._dispatcher.pump(conn, job)
        self._on_staged()
