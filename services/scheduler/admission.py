"""Requests: new jobs written, planned and admitted (or ended), regenerations, cancellations.

Each request is handled in a PostgreSQL transaction (`outbox.transaction`) that writes the
job's row first (with BEGIN, for a single record): a redelivered request finds its row
there and changes nothing. Records the consumer loop hands over together share one
transaction, in order: all of them commit or none (the loop then handles them one by one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import asyncpg

from imagegen.db import transient_as_retryable
from imagegen.errors import NotFoundError, PermanentError
from imagegen.kafka import Record, decode, handling
from schemas.events import (
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
from services.scheduler.catalogue import Catalogue
from services.scheduler.dispatch import Dispatcher
from services.scheduler.jobs import CANCELLING, JobBook, NewJob
from services.scheduler.outbox import staged, transaction
from services.scheduler.planning import (
    JobPlan,
    characters_of,
    kind_of,
    plan_request,
    story_of,
    with_chain,
)
from services.scheduler.provider_health import ProviderHealth
from services.scheduler.references import load_reference_sets
from services.scheduler.rerolls import regenerate
from services.scheduler.scenes import SceneFacts
from services.scheduler.scenes_llm import SceneResolver
from services.scheduler.settings import SchedulerSettings

log = logging.getLogger(__name__)
MAX_VERSION = MAX_REGENERATIONS + 1
_OURS = (GenerateImages, GenerateScene, GenerateStory, RegenerateImage, CancelJob)
"""The requests the scheduler acts on; deletes and reviews belong to storage."""


class Admission:
    """The `requests` topic's handlers."""

    def __init__(
        self,
        settings: SchedulerSettings,
        pool: asyncpg.Pool,
        catalogue: Catalogue,
        book: JobBook,
        dispatcher: Dispatcher,
        scenes: SceneResolver,
        health: ProviderHealth,
        on_staged: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._catalogue = catalogue
        self._book = book
        self._dispatcher = dispatcher
        self.scenes = scenes
        self.health = health
        self._on_staged = on_staged

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

    def _wake_relay(self, staged_before: int) -> None:
        """After a commit: publish what it staged now (nothing staged, no relay pass)."""
        if staged() > staged_before:
            self._on_staged()


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
