"""Handlers: requests become admitted jobs; image outcomes move them on.

Each message is handled in a PostgreSQL transaction that locks the job's row first, changes
state and stages the messages it causes in the outbox (see `outbox.py`); a redelivered
message finds its effects already there and changes nothing. Messages the consumer loop
hands over together share one transaction (`on_requests`, `on_events`), in order: all of
them commit or none (the loop then handles them one by one). Money rules are in `ledger.py`,
dispatch rules in `dispatch.py`, retries and failover in `retries.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import asyncpg

from imagegen.db import sql_literal, transient_as_retryable
from imagegen.errors import NotFoundError, PermanentError
from imagegen.kafka import Publisher, Record, decode, handling
from schemas.events import (
    EVENT_ADAPTER,
    ConsistencyFlagged,
    Event,
    GenerationCompleted,
    GenerationFailed,
    GenerationStarted,
    ImageStored,
    JobStatus,
)
from schemas.jobs import GenerateImage
from schemas.requests import (
    MAX_REGENERATIONS,
    REQUEST_ADAPTER,
    CancelJob,
    GenerateImages,
    GenerateScene,
    GenerateStory,
    JobKind,
    RegenerateImage,
    Request,
)
from schemas.topics import TopicNames
from services.scheduler.catalogue import Catalogue, offered
from services.scheduler.day_totals import usd
from services.scheduler.dispatch import Dispatcher
from services.scheduler.jobs import CANCELLING, JobBook, NewJob, lock_statement
from services.scheduler.ledger import Ledger
from services.scheduler.outbox import SOURCE, OutboxRelay, staged, transaction
from services.scheduler.overdue import AWAITING_COMPLETED, AWAITING_STORED, OverdueAttempts
from services.scheduler.planning import (
    JobPlan,
    characters_of,
    kind_of,
    plan_request,
    story_of,
    with_chain,
)
from services.scheduler.provider_health import ProviderHealth, counts_against
from services.scheduler.references import load_reference_sets, record_reference_set
from services.scheduler.rerolls import regenerate
from services.scheduler.retries import Retries
from services.scheduler.scenes import SceneFacts
from services.scheduler.scenes_llm import SceneResolver, build_scene_resolver
from services.scheduler.settings import SchedulerSettings
from services.scheduler.ticker import Ticker

log = logging.getLogger(__name__)
MAX_VERSION = MAX_REGENERATIONS + 1
_OURS = (GenerateImages, GenerateScene, GenerateStory, RegenerateImage, CancelJob)
"""The requests the scheduler acts on; deletes and reviews belong to storage."""


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        pool: asyncpg.Pool,
        publisher: Publisher,
        topics: TopicNames,
        catalogue: Catalogue | None = None,
        scenes: SceneResolver | None = None,
    ) -> None:
        self._settings = settings
        self.scenes = scenes or build_scene_resolver(settings)
        self._pool = pool
        self._topics = topics
        self._catalogue = catalogue or offered(settings)
        self.ledger = Ledger(settings, topics.events)
        self._dispatcher = Dispatcher(settings, topics)
        self._book = JobBook(topics, self.ledger, self._dispatcher)
        self.health = ProviderHealth(
            settings.provider_failure_threshold, settings.provider_cooldown_s
        )
        self._retries = Retries(
            settings, topics, self.ledger, self._dispatcher, self._book, self.health
        )
        overdue = OverdueAttempts(
            settings, topics, self._dispatcher, self._book, self._retries.failed
        )
        self.relay = OutboxRelay(pool, publisher, interval_s=settings.relay_interval_s)
        self.ticker = Ticker(
            pool,
            self._dispatcher,
            interval_s=settings.tick_interval_s,
            on_staged=self.relay.wake,
            overdue=overdue.fail,
        )

    async def run_background(self) -> None:
        """The outbox relay and the retry ticker, until `stop_background()`."""
        await asyncio.gather(self.relay.run(), self.ticker.run())

    def stop_background(self) -> None:
        self.ticker.stop()
        self.relay.stop()

    # --- requests ---------------------------------------------------------------------

    async def on_request(self, record: Record) -> None:
        request = decode(record, REQUEST_ADAPTER)
        if not isinstance(request, _OURS):
            return  # deletes and reviews belong to storage
        readings = await self._read_scenes(request)
        before = staged()
        # A new job's row goes with BEGIN (its status says whether it was new).
        job = _new_job(request)
        lead = job.statement() if job is not None else ""
        async with (
            transient_as_retryable(),
            self._pool.acquire() as conn,
            transaction(conn, lead) as status,
        ):
            await self._apply_request(conn, request, readings, status if lead else None, job)
        self._wake_relay(before)

    async def on_requests(self, records: Sequence[Record]) -> None:
        """`on_request` for several records in one transaction."""
        ours = [
            (record, request)
            for record in records
            if isinstance(request := decode(record, REQUEST_ADAPTER), _OURS)
        ]
        if not ours:
            return
        readings = [await self._read_scenes(request) for _, request in ours]
        before = staged()
        async with transient_as_retryable(), self._pool.acquire() as conn, transaction(conn):
            for (record, request), read in zip(ours, readings, strict=True):
                with handling(record):
                    await self._apply_request(conn, request, read)
        self._wake_relay(before)

    async def _apply_request(
        self,
        conn: asyncpg.Connection,
        request: Request,
        readings: dict[int, SceneFacts],
        sent: str | None = None,
        job: NewJob | None = None,
    ) -> None:
        """Apply one request (`sent`: the status of `job`'s insert, sent already)."""
        if isinstance(request, GenerateImages | GenerateScene | GenerateStory | RegenerateImage):
            new = job or _new_job(request)
            assert new is not None
            if not await self._book.insert(conn, new, sent=sent):
                return  # a redelivery: the job was handled already
            if isinstance(request, RegenerateImage):
                await self._regenerate(conn, request)
            else:
                await self._schedule(conn, request, readings)
        elif isinstance(request, CancelJob):
            await self._cancel(conn, request)

    async def _read_scenes(self, request: object) -> dict[int, SceneFacts]:
        """An LLM's readings of the request's pages that lack a scene description, taken
        before the transaction (no row is locked while it waits; bounded by its budget)."""
        if not isinstance(request, GenerateScene | GenerateStory) or not self.scenes.enabled:
            return {}
        async with transient_as_retryable():
            if await self._pool.fetchval("SELECT 1 FROM jobs WHERE job_id = $1", request.job_id):
                return {}  # a redelivery: planned already
        return await self.scenes.resolve(request)

    async def _schedule(
        self,
        conn: asyncpg.Connection,
        request: GenerateImages | GenerateScene | GenerateStory,
        readings: dict[int, SceneFacts] | None = None,
    ) -> None:
        """After the job's row is written: plan it and admit it, or end it failed."""
        try:
            references = await load_reference_sets(conn, request.user_id, characters_of(request))
            plan = plan_request(
                request,
                self._settings,
                self._catalogue,
                references,
                scenes=readings,
                avoid=self.health.cooling_down(),
            )
        except PermanentError as exc:
            await self._book.end(
                conn, request.job_id, JobStatus.FAILED, "invalid_request", str(exc)
            )
            return
        await self._book.admit(conn, plan)

    async def _regenerate(self, conn: asyncpg.Connection, request: RegenerateImage) -> None:
        """After the job's row is written: the image's next version, or the job failed."""
        rows = await conn.fetch(
            "SELECT i.message, i.version, i.status FROM job_images i JOIN jobs j USING (job_id)"
            " WHERE i.image_id = $1 AND j.user_id = $2 AND i.job_id <> $3"
            " ORDER BY i.version, j.created_at",
            request.image_id,
            request.user_id,
            request.job_id,
        )
        if not rows:
            await self._book.end(
                conn,
                request.job_id,
                JobStatus.FAILED,
                "image_not_found",
                f"image_id: no image {request.image_id!r} of yours",
            )
            return
        live = {r["version"] for r in rows if r["status"] not in ("failed", "cancelled")}
        if request.version > MAX_VERSION or len(live) >= MAX_VERSION:
            await self._book.end(
                conn,
                request.job_id,
                JobStatus.FAILED,
                "regeneration_limit",
                f"image {request.image_id} has had its {MAX_REGENERATIONS} regenerations",
            )
            return
        if request.version in live:
            await self._book.end(
                conn,
                request.job_id,
                JobStatus.FAILED,
                "invalid_request",
                f"version: version {request.version} of image {request.image_id} exists",
            )
            return
        original = GenerateImage.model_validate_json(rows[0]["message"])
        try:
            job = regenerate(original, request)
            chosen = with_chain(job, self._catalogue, None, self.health.cooling_down())
        except NotFoundError as exc:
            await self._book.end(
                conn, request.job_id, JobStatus.FAILED, "image_not_found", str(exc)
            )
            return
        except PermanentError as exc:
            await self._book.end(
                conn, request.job_id, JobStatus.FAILED, "invalid_request", str(exc)
            )
            return
        await self._book.admit(
            conn,
            JobPlan(
                job_id=request.job_id,
                user_id=request.user_id,
                user_tier=request.tier,
                kind=JobKind.REGENERATE,
                story_id=job.image.story_id,
                images=(chosen,),
            ),
        )

    async def _cancel(self, conn: asyncpg.Connection, request: CancelJob) -> None:
        job = await self._dispatcher.lock_job(conn, request.job_id)
        if job is None or job["user_id"] != request.user_id:
            log.info("event=cancel_unknown_job job_id=%s", request.job_id)
            return
        if job["status"] == CANCELLING or JobStatus(job["status"]).terminal:
            return
        await self._book.cancel(conn, job, "cancelled by user")

    # --- outcomes ---------------------------------------------------------------------

    async def on_event(self, record: Record) -> None:
        event = decode(record, EVENT_ADAPTER)
        if not self._wanted(event):
            return
        self._track_health(event)
        before = staged()
        async with transient_as_retryable(), self._pool.acquire() as conn:
            await self._apply_alone(conn, event)
        self._wake_relay(before, [event])

    async def on_events(self, records: Sequence[Record]) -> None:
        """`on_event` for several records in one transaction (none when none is wanted)."""
        wanted = [
            (record, event)
            for record in records
            if self._wanted(event := decode(record, EVENT_ADAPTER))
        ]
        if not wanted:
            return
        for _, event in wanted:
            self._track_health(event)  # counted once per event id, whatever happens next
        before = staged()
        async with transient_as_retryable(), self._pool.acquire() as conn:
            if len(wanted) == 1:
                with handling(wanted[0][0]):
                    await self._apply_alone(conn, wanted[0][1])
            else:
                # The first event's first statement, if it has one of literals, goes with BEGIN.
                lead = self._lead(wanted[0][1])
                async with transaction(conn, lead):
                    for at, (record, event) in enumerate(wanted):
                        with handling(record):
                            await self._apply_event(conn, event, lead_sent=at == 0)
        self._wake_relay(before, [event for _, event in wanted])

    def _wake_relay(self, staged_before: int, events: Sequence[Event] = ()) -> None:
        """After a commit: publish what it staged now (nothing staged, no relay pass); and
        when an attempt failed or was flagged (a retry may now wait), the ticker looks."""
        if staged() > staged_before:
            self.relay.wake()
        if any(isinstance(e, GenerationFailed | ConsistencyFlagged) for e in events):
            self.ticker.wake()

    @staticmethod
    def _wanted(event: Event) -> bool:
        """Whether `_apply_event` does anything with `event` (no transaction otherwise)."""
        if event.source == SOURCE or not event.job_id:
            return False  # our own events (final failures, progress) need nothing more
        if isinstance(event, ConsistencyFlagged):
            return not event.data.final
        return isinstance(
            event, GenerationStarted | GenerationCompleted | ImageStored | GenerationFailed
        )

    async def _apply_alone(self, conn: asyncpg.Connection, event: Event) -> None:
        """`_apply_event` in a transaction of its own, in as few round trips as it allows:
        a `generation_started` is one statement (atomic without BEGIN and COMMIT); else the
        event's first statement goes with BEGIN where it has one (`_lead`)."""
        if isinstance(event, GenerationStarted):
            await self._apply_event(conn, event)
        else:
            async with transaction(conn, self._lead(event)):
                await self._apply_event(conn, event, lead_sent=True)

    def _lead(self, event: Event) -> str:
        """The first statement of `_apply_event` for `event` when it is one of literals, which
        may travel with BEGIN (the deadline update of a start or a completion, the job's lock
        for a stored image); else empty."""
        assert event.job_id is not None
        if isinstance(event, GenerationStarted):
            return _watch_statement(
                event.job_id,
                event.data.image_index,
                event.data.attempt,
                AWAITING_COMPLETED,
                self._settings.attempt_run_deadline_s,
            )
        if isinstance(event, ImageStored):
            return lock_statement(event.job_id)
        if isinstance(event, GenerationCompleted):
            # A completion names no attempt: the current one is meant.
            return _watch_statement(
                event.job_id,
                event.data.image_index,
                None,
                AWAITING_STORED,
                self._settings.attempt_store_deadline_s,
            )
        return ""

    async def _apply_event(
        self, conn: asyncpg.Connection, event: Event, *, lead_sent: bool = False
    ) -> None:
        """Apply one event (`lead_sent`: its `_lead` statement was sent already)."""
        assert event.job_id is not None
        if not lead_sent and (lead := self._lead(event)):
            # For a completion, before the ledger's locks: every path takes the image first.
            await conn.execute(lead)
        if isinstance(event, GenerationCompleted):
            await self.ledger.settle(
                conn,
                event.job_id,
                event.data.image_index,
                event.data.seed,
                usd(event.data.cost_usd),
                event.data.provider or event.data.backend,
            )
        elif isinstance(event, ImageStored):
            await self._stored(conn, event)
        elif isinstance(event, GenerationFailed):
            await self._failed(conn, event)
        elif isinstance(event, ConsistencyFlagged) and not event.data.final:
            await self._flagged(conn, event)

    def _track_health(self, event: object) -> None:
        """Attempt outcomes feed provider health (counted once per event id)."""
        if isinstance(event, GenerationFailed) and not event.data.final:
            self.health.failure(
                event.data.provider, retryable=counts_against(event.data), event_id=event.id
            )
        elif isinstance(event, GenerationCompleted):
            self.health.success(event.data.provider or event.data.backend, event_id=event.id)

    async def _current(
        self, conn: asyncpg.Connection, job_id: str, index: int
    ) -> tuple[asyncpg.Record, asyncpg.Record] | None:
        """The running job and its dispatched image, locked; None if the outcome is stale."""
        job = await self._dispatcher.lock_job(conn, job_id)
        if job is None or job["status"] not in ("running", CANCELLING):
            return None  # unknown or ended: late outcomes change nothing
        row = await conn.fetchrow(
            "SELECT * FROM job_images WHERE job_id = $1 AND image_index = $2 FOR UPDATE",
            job_id,
            index,
        )
        if row is None or row["status"] != "dispatched":
            return None
        return job, row

    async def _stored(self, conn: asyncpg.Connection, event: ImageStored) -> None:
        """After `_lead` locked the job: store the image (`JobBook.store`), book its cost,
        then progress, dependents or the job's end."""
        assert event.job_id is not None
        data = event.data
        cost = usd(data.cost_usd)
        keys = json.dumps({r.name: r.key for r in data.renditions})
        row = await self._book.store(conn, event.job_id, data.image_index, data.seed, keys)
        # The cost is booked even when the job is gone (cancelled): the money was spent.
        if row is None:
            await self.ledger.settle_stored(
                conn, event.job_id, data.image_index, data.seed, cost, data.provider
            )
            return
        await self.ledger.settle_stored_copy(conn, row["generation"], cost, data.provider)
        if not row["stored_now"]:
            return  # not dispatched (a redelivery), or the job ended: nothing more
        msg = GenerateImage.model_validate_json(row["message"])
        if msg.image.kind is JobKind.REFERENCE:
            await record_reference_set(conn, event.job_id, msg.character)
        # The row holds the job's columns and its counts after the store.
        await self._book.image_settled(conn, row, row["phase"], row)

    async def _failed(self, conn: asyncpg.Connection, event: GenerationFailed) -> None:
        assert event.job_id is not None
        current = await self._current(conn, event.job_id, event.data.image_index)
        if current is None:
            return
        job, row = current
        msg = GenerateImage.model_validate_json(row["message"])
        if msg.image.attempt != event.data.attempt:
            return  # an earlier attempt's failure, redelivered
        if job["status"] == CANCELLING:
            await self._book.drop_in_flight(conn, job, row["image_index"], row["phase"])
            return
        await self._retries.failed(conn, job, row, event.data)

    async def _flagged(self, conn: asyncpg.Connection, event: ConsistencyFlagged) -> None:
        assert event.job_id is not None
        current = await self._current(conn, event.job_id, event.data.image_index)
        if current is None:
            return
        job, row = current
        msg = GenerateImage.model_validate_json(row["message"])
        variation = event.data.variation + 1
        if job["status"] == CANCELLING and msg.image.variation == event.data.variation:
            # A non-final flag is not stored; no variation starts for a cancelled job.
            await self._book.drop_in_flight(conn, job, row["image_index"], row["phase"])
            return
        if msg.image.variation != event.data.variation or variation > msg.max_variations:
            return  # a redelivery, or postprocess forwards this one flagged
        await self._retries.vary(conn, job, row, variation)


def _new_job(request: Request) -> NewJob | None:
    """The job row a request creates (None for one that creates no job)."""
    if isinstance(request, RegenerateImage):
        return NewJob(
            request.job_id,
            request.user_id,
            request.tier,
            JobKind.REGENERATE,
            request.model_dump_json(),
        )
    if isinstance(request, GenerateImages | GenerateScene | GenerateStory):
        return NewJob(
            request.job_id,
            request.user_id,
            request.tier,
            kind_of(request),
            request.model_dump_json(),
            story_of(request),
        )
    return None


def _watch_statement(
    job_id: str, index: int, attempt: int | None, awaiting: str, deadline_s: float
) -> str:
    """Give the dispatched image's attempt `deadline_s` to reach `awaiting`
    (`OverdueAttempts.fail` fails it after that), never back from awaiting storage: an
    update as a simple query (literals: it may follow BEGIN in one round trip); empty when
    no deadline is kept."""
    if deadline_s <= 0:
        return ""
    return (
        "UPDATE job_images SET due_at = now() + make_interval(secs =>"
        f" {sql_literal(repr(float(deadline_s)))}::float8), awaiting = {sql_literal(awaiting)}"
        f" WHERE job_id = {sql_literal(job_id)} AND image_index = {int(index)}"
        " AND status = 'dispatched'"
        + ("" if attempt is None else f" AND attempt = {int(attempt)}")
        + (
            ""
            if awaiting == AWAITING_STORED
            else f" AND awaiting IS DISTINCT FROM {sql_literal(AWAITING_STORED)}"
        )
    )
