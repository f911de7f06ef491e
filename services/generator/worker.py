"""jobs.<tier> -> one image -> staged PNG -> images.raw, with started/progress/completed events.

Each attempt ends in exactly one outcome event: `generation_completed` (with the actual
cost and the provider) or `generation_failed` with final=false - retries, failover and the
final verdict belong to the scheduler (DECISIONS.md #2). Failures of this pod's own
plumbing (S3, Kafka) are raised instead, so the consumer loop retries the message.

The image itself comes from the `MicroBatcher` (batching.py): alone, or in one pipeline
call with compatible images that other consumer lanes (lanes.py) are handling meanwhile;
each image still gets its own events, blob, record and outcome.

Delivery is at least once: the scheduler's relay re-sends what it had in flight when it
crashed (outbox.py). An attempt this process has already finished is skipped, so a copy
costs no second generation (nor a second provider bill); downstream, the copies' events
and images carry the original's ids and are dropped there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import UTC, datetime

from imagegen.blobstore import BlobStore, put_staging
from imagegen.errors import PermanentError
from imagegen.events import EventEmitter
from imagegen.kafka import Publisher, Record, decode
from imagegen.metrics import instruments
from imagegen.telemetry import tracer
from schemas.events import (
    GenerationCompleted,
    GenerationCompletedData,
    GenerationFailed,
    GenerationFailedData,
    GenerationStarted,
    GenerationStartedData,
    image_event,
    image_facts,
)
from schemas.images import GenerationRecord, RawImage, Timings
from schemas.jobs import GenerateImage
from schemas.topics import TopicNames
from services.generator.backends import (
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ImageBackend,
)
from services.generator.backends.base import Region
from services.generator.batching import BatchingBackend, MicroBatcher
from services.generator.cancellation import CancelWatch, InMemoryCancellationStore
from services.generator.loras import LoraFiles
from services.generator.progress import ProgressReporter
from services.generator.prompts import prompt_for_job
from services.generator.providers import Providers, ProviderUnavailable
from services.generator.settings import GeneratorSettings

log = logging.getLogger(__name__)
SOURCE = "imagegen/generator"
CANCELLED = "Cancelled"


class RecentAttempts:
    """The attempts (`ImageIdentity.idempotency_key`) this process finished lately, oldest
    forgotten first."""

    def __init__(self, capacity: int = 8192) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)


class Generator:
    def __init__(
        self,
        settings: GeneratorSettings,
        providers: Providers | ImageBackend,
        blobs: BlobStore,
        publisher: Publisher,
        topics: TopicNames,
        cancels: CancelWatch | None = None,
    ) -> None:
        self._settings = settings
        self._providers = (
            providers if isinstance(providers, Providers) else Providers.single(providers)
        )
        self._blobs = blobs
        self._loras = LoraFiles(blobs, settings.lora_dir)
        self._publisher = publisher
        self._topics = topics
        self._events = EventEmitter(publisher, topics.events, SOURCE)
        self.cancels = cancels or CancelWatch(
            InMemoryCancellationStore(), settings.generator.cancel_poll_s
        )
        # The GPU is the unit of concurrency: one call at a time, compatible images batched;
        # hosted (API) backends wait on HTTP beside it, several at once.
        self.batcher = MicroBatcher(
            settings.generator.batch_max_size,
            settings.generator.batch_max_wait_ms / 1000,
            hosted_concurrency=settings.generator.hosted_concurrency,
        )
        backends = list(self._providers.backends())
        self.batches = any(isinstance(backend, BatchingBackend) for backend in backends)
        """Whether any backend here batches (else one GPU lane is enough)."""
        self.self_hosted = any(getattr(backend, "self_hosted", True) for backend in backends)
        """Whether any backend here runs on this pod's own GPU/CPU."""
        self.hosted = any(not getattr(backend, "self_hosted", True) for backend in backends)
        """Whether any backend here is a hosted API (images in flight concurrently)."""
        self.finished = RecentAttempts()
        self._running: dict[str, asyncio.Future[None]] = {}

    async def on_job(self, record: Record) -> None:
        job = decode(record, GenerateImage)
        img = job.image
        key = img.idempotency_key
        # A copy read while the original runs in another lane (the same partition's
        # records run side by side) waits for it: its outcome decides.
        while (running := self._running.get(key)) is not None:
            await asyncio.shield(running)
        if key in self.finished:
            log.info(
                "event=duplicate_attempt_skipped job_id=%s index=%d attempt=%d",
                img.job_id,
                img.image_index,
                img.attempt,
            )
            return
        done = asyncio.get_running_loop().create_future()
        self._running[key] = done
        try:
            await self._attempt(job)
            self.finished.add(key)
        finally:
            del self._running[key]
            done.set_result(None)

    async def _attempt(self, job: GenerateImage) -> None:
        """Run one attempt to its single outcome event."""
        img = job.image
        provider = job.provider or self._providers.default
        if await self.cancels.store.is_cancelled(img.job_id):
            await self._failed(job, provider, CANCELLED, "job cancelled before it started")
            return
        try:
            provider, backend = self._providers.resolve(job.provider)
        except ProviderUnavailable as exc:
            await self._failed(job, provider, type(exc).__name__, str(exc))
            return
        queue_wait_ms = max(0, int((datetime.now(UTC) - job.enqueued_at).total_seconds() * 1000))
        # Sent without waiting for its acknowledgement: the references and the image do not
        # depend on it. It is awaited before anything else of the attempt is published (so
        # the outcome never overtakes it) and before the handler returns (offsets follow).
        started = asyncio.ensure_future(
            self._events.emit(
                image_event(
                    GenerationStarted,
                    img,
                    img.attempt,
                    data=GenerationStartedData(
                        image_id=img.image_id,
                        image_index=img.image_index,
                        attempt=img.attempt,
                        backend=backend.name,
                        model=backend.model,
                        queue_wait_ms=queue_wait_ms,
                        provider=provider,
                        **image_facts(img),
                    ),
                )
            )
        )
        try:
            await self._generate(job, provider, backend, queue_wait_ms, started)
        except BaseException:
            await asyncio.wait([started])  # never left in flight; the error in hand wins
            if not started.cancelled():
                started.exception()
            raise
        await started  # already awaited before the outcome was published

    async def _generate(
        self,
        job: GenerateImage,
        provider: str,
        backend: ImageBackend,
        queue_wait_ms: int,
        started: asyncio.Future[None],
    ) -> None:
        """The attempt after `generation_started` was sent (`started`, awaited before any
        further publish)."""
        img = job.image
        prompt, negative = prompt_for_job(job)
        try:
            fetched: dict[str, bytes] = {}
            references = await self._fetch_all(job.reference_keys, fetched)
            regions = await self._regions(job, fetched)
            loras = await self._loras.for_job(job)
        except PermanentError as exc:  # a reference deleted meanwhile: no attempt can succeed
            await started
            await self._failed(job, provider, type(exc).__name__, str(exc))
            return
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            seed=job.seed,
            width=job.width,
            height=job.height,
            steps=job.steps,
            guidance=job.guidance,
            identity_seed=job.character.seed,
            reference_images=references,
            model=job.model,
            quality=job.quality.value,
            request_id=f"{img.image_id}-a{img.attempt}-v{img.variation}",
            regions=regions,
            loras=loras,
        )
        reporter = ProgressReporter(
            asyncio.get_running_loop(), self._events, job, self._settings.progress_interval_s
        )
        try:
            with tracer().start_as_current_span(
                "generate",
                attributes={
                    "job_id": img.job_id,
                    "image_index": img.image_index,
                    "provider": provider,
                    "model": request.model or backend.model,
                    "steps": request.steps,
                },
            ) as span:
                async with self.cancels.watching(img.job_id) as token:
                    result = await self.batcher.generate(
                        provider, backend, request, reporter, token
                    )
                    cancelled_late = token.is_set()
                span.set_attribute("batch_size", result.batch_size)
        except GenerationCancelled as exc:
            await reporter.flush()
            await started
            await self._failed(job, provider, CANCELLED, str(exc))
            return
        except PermanentError as exc:
            await reporter.flush()
            await started
            await self._failed(job, provider, _error_type(exc), str(exc), retryable=False)
            return
        except Exception as exc:  # a backend crash (OOM, driver): this attempt, not the message
            log.exception("event=generation_error job_id=%s index=%d", img.job_id, img.image_index)
            await reporter.flush()
            await started
            await self._failed(job, provider, type(exc).__name__, str(exc), retryable=True)
            return
        await reporter.flush()
        if cancelled_late:
            # Finished before the backend saw the cancel: the user asked for no image.
            await started
            await self._failed(job, provider, CANCELLED, "job cancelled during generation")
            return
        await self._publish_result(
            job, provider, backend, request, result, prompt, negative, queue_wait_ms, started
        )

    async def _publish_result(
        self,
        job: GenerateImage,
        provider: str,
        backend: ImageBackend,
        request: GenerationRequest,
        result: GeneratedImage,
        prompt: str,
        negative: str,
        queue_wait_ms: int,
        started: asyncio.Future[None],
    ) -> None:
        img = job.image
        blob = await put_staging(self._blobs, result.png, "image/png")
        await started
        # Self-hosted backends price their busy GPU seconds; API backends (no GPU of ours)
        # report their own price and no GPU seconds.
        cost = result.cost_usd if result.cost_usd is not None else backend.cost_usd(result.seconds)
        gpu_seconds = result.seconds if getattr(backend, "self_hosted", True) else None
        raw = RawImage(
            image=img,
            blob=blob,
            width=result.width,
            height=result.height,
            record=GenerationRecord(
                backend=result.backend,
                model=result.model,
                seed=request.seed,
                steps=request.steps,
                guidance=request.guidance,
                prompt=prompt,
                negative_prompt=negative,
                width=result.width,
                height=result.height,
                reference_keys=list(job.reference_keys),
                versions=result.versions,
                device=result.device,
                demo=result.demo,
                conditioning=result.conditioning,
                conditioning_strength=result.conditioning_strength,
                quality=result.quality,
                batch_size=result.batch_size,
                scene_description=job.scene_description,
                scene_source=job.scene_source,
                loras=dict(result.loras),
            ),
            provider=provider,
            cost_usd=cost,
            timings=Timings(queue_wait_ms=queue_wait_ms, generation_ms=int(result.seconds * 1000)),
            style=job.style,
            overlay_text=job.overlay_text,
            identity_keys=_identity_keys(job),
            max_variations=job.max_variations,
            layout=list(job.layout),
        )
        await self._publisher.publish(self._topics.images_raw, img.job_id, raw)
        metrics = instruments()
        metrics.generation_seconds.record(
            result.seconds, {"provider": provider, "model": result.model}
        )
        metrics.images.add(1, {"outcome": "completed", "provider": provider})
        metrics.cost.add(cost, {"provider": provider, "model": result.model})
        await self._events.emit(
            image_event(
                GenerationCompleted,
                img,
                img.attempt,
                data=GenerationCompletedData(
                    image_id=img.image_id,
                    image_index=img.image_index,
                    duration_ms=int(result.seconds * 1000),
                    backend=result.backend,
                    model=result.model,
                    seed=request.seed,
                    cost_usd=cost,
                    provider=provider,
                    gpu_seconds=gpu_seconds,
                    **image_facts(img),
                ),
            )
        )

    async def _fetch_all(self, keys: list[str], fetched: dict[str, bytes]) -> tuple[bytes, ...]:
        """The bytes of `keys`, each fetched once per attempt (`fetched` remembers them)."""
        for key in keys:
            if key not in fetched:
                fetched[key] = await self._blobs.get(key)
        return tuple(fetched[key] for key in keys)

    async def _regions(self, job: GenerateImage, fetched: dict[str, bytes]) -> tuple[Region, ...]:
        """Each character's region with its own references (multi-character images)."""
        names = {c.id: c.name for c in (job.character, *job.characters)}
        return tuple(
            [
                Region(
                    character_id=r.character_id,
                    name=names.get(r.character_id, ""),
                    box=(r.x0, r.y0, r.x1, r.y1),
                    reference_images=await self._fetch_all(r.reference_keys, fetched),
                )
                for r in job.layout
            ]
        )

    async def _failed(
        self,
        job: GenerateImage,
        provider: str,
        error_type: str,
        error: str,
        *,
        retryable: bool = False,
    ) -> None:
        """One failed attempt; never final here - the scheduler decides what happens next."""
        img = job.image
        log.warning(
            "event=generation_failed job_id=%s index=%d attempt=%d provider=%s "
            "error_type=%s retryable=%s error=%r",
            img.job_id,
            img.image_index,
            img.attempt,
            provider,
            error_type,
            retryable,
            error[:200],
        )
        instruments().images.add(1, {"outcome": "failed", "provider": provider})
        await self._events.emit(
            image_event(
                GenerationFailed,
                img,
                img.attempt,
                data=GenerationFailedData(
                    image_id=img.image_id,
                    image_index=img.image_index,
                    attempt=img.attempt,
                    error_type=error_type,
                    error=error[:500],
                    retryable=retryable,
                    final=False,
                    provider=provider,
                    model=job.model or "",
                    **image_facts(img),
                ),
            )
        )


def _error_type(exc: Exception) -> str:
    """The attempt's `error_type`: the error's own well-known value (a content-policy
    refusal's ContentPolicyViolation), else its class name."""
    named = getattr(exc, "error_type", None)
    return named if isinstance(named, str) else type(exc).__name__


def _identity_keys(job: GenerateImage) -> list[str]:
    """What postprocess scores identity against: the job's references, then the character's."""
    keys = [*job.reference_keys, *job.character.reference_keys]
    return list(dict.fromkeys(keys))
