"""Failed attempts: retry with backoff, or fail over to the next offer; consistency draws.

Per DECISIONS.md #2: up to `max_attempts` attempts per provider, the delay doubling from
`retry_backoff_s` (capped); the due time lives in `job_images.due_at` and the `Ticker`
(`ticker.py`) dispatches due retries. A permanent failure (retryable=false, a provider the
generator does not run) skips the remaining attempts of that provider. Content-policy
refusals take their own path (`refusals.py`); an attempt past its deadline comes here as
a retryable failure (`overdue.py`). When the chain is exhausted the image fails alone
(`give_up.py`). `attempt` grows across providers and variations, so every attempt of an
image has its own ids.
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta

import asyncpg

from schemas.events import ErrorType, GenerationFailedData
from schemas.jobs import GenerateImage
from schemas.requests import UserTier
from schemas.topics import TopicNames
from services.scheduler.attempts import next_attempt, offer_chain
from services.scheduler.day_totals import Slot
from services.scheduler.dispatch import Dispatcher
from services.scheduler.give_up import GiveUp
from services.scheduler.jobs import JobBook
from services.scheduler.ledger import Ledger
from services.scheduler.planning import on_offer
from services.scheduler.provider_health import ProviderHealth
from services.scheduler.refusals import Refusals
from services.scheduler.rerolls import vary as vary_job
from services.scheduler.reservations import Hold
from services.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)


def backoff(settings: SchedulerSettings, provider_attempt: int) -> float:
    """Seconds before attempt `provider_attempt + 1` on the same provider."""
    delay = settings.retry_backoff_s * 2 ** (provider_attempt - 1)
    return float(min(delay, settings.retry_backoff_max_s))


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
        self._ledger = ledger
        self._dispatcher = dispatcher
        self._health = health or ProviderHealth(0, 0)
        self._give_up = GiveUp(topics, ledger, book)
        self._refusals = Refusals(self._give_up)

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
            await self._refusals.refused(conn, job, row, msg, data)
            return
        retryable = data.retryable and data.error_type != ErrorType.CANCELLED
        chain = offer_chain(row["offers"])
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
        await self._give_up.image(conn, job, row, msg, data.error_type, data.error)

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
        offer = offer_chain(row["offers"])[row["offer_index"]]
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
            await self._give_up.image(conn, job, row, msg, refusal.reason_code, refusal.reason)
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
