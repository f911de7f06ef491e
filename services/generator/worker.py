"""jobs.<tier> -> one image -> staged PNG -> images.raw, with started/progress/completed events."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from datetime import UTC, datetime

from imagegen.blobstore import BlobStore, put_staging
from imagegen.errors import PermanentError, RetryableError
from imagegen.events import EventEmitter
from imagegen.kafka import Publisher, Record, decode
from schemas.events import (
    GenerationCompleted,
    GenerationCompletedData,
    GenerationFailed,
    GenerationFailedData,
    GenerationProgress,
    GenerationProgressData,
    GenerationStarted,
    GenerationStartedData,
    image_envelope,
)
from schemas.images import GenerationRecord, RawImage, Timings
from schemas.jobs import GenerateImage
from schemas.topics import TopicNames
from services.generator.backends import CancelToken, GeneratedImage, GenerationRequest, ImageBackend
from services.generator.prompts import build_prompt
from services.generator.settings import GeneratorSettings

log = logging.getLogger(__name__)
SOURCE = "imagegen/generator"


class ProgressReporter:
    """Turns backend step callbacks (worker thread) into throttled progress events (loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        emitter: EventEmitter,
        job: GenerateImage,
        interval_s: float,
    ) -> None:
        self._loop = loop
        self._emitter = emitter
        self._job = job
        self._interval = interval_s
        self._last = 0.0
        self.sent: list[concurrent.futures.Future[None]] = []
        self.steps_seen = 0

    def __call__(self, step: int, total: int) -> None:
        self.steps_seen += 1
        now = time.monotonic()
        if step != total and now - self._last < self._interval:
            return
        self._last = now
        img = self._job.image
        event = GenerationProgress(
            **image_envelope(img, "generation_progress", img.attempt, step),
            data=GenerationProgressData(
                image_id=img.image_id, image_index=img.image_index, step=step, total_steps=total
            ),
        )
        self.sent.append(asyncio.run_coroutine_threadsafe(self._emitter.emit(event), self._loop))

    async def flush(self) -> None:
        for future in self.sent:
            await asyncio.wrap_future(future)


class Generator:
    def __init__(
        self,
        settings: GeneratorSettings,
        backend: ImageBackend,
        blobs: BlobStore,
        publisher: Publisher,
        topics: TopicNames,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._blobs = blobs
        self._publisher = publisher
        self._topics = topics
        self._events = EventEmitter(publisher, topics.events, SOURCE)
        # One image at a time per pod: the GPU is the unit of concurrency.
        self._gpu = asyncio.Lock()

    async def on_job(self, record: Record) -> None:
        job = decode(record, GenerateImage)
        img = job.image
        queue_wait_ms = max(0, int((datetime.now(UTC) - job.enqueued_at).total_seconds() * 1000))
        await self._events.emit(
            GenerationStarted(
                **image_envelope(img, "generation_started", img.attempt),
                data=GenerationStartedData(
                    image_id=img.image_id,
                    image_index=img.image_index,
                    attempt=img.attempt,
                    backend=self._backend.name,
                    model=self._backend.model,
                    queue_wait_ms=queue_wait_ms,
                ),
            )
        )
        prompt, negative = build_prompt(job.character, job.style, job.pose, job.prompt)
        if job.negative_prompt:
            negative = f"{negative}, {job.negative_prompt}"
        references = tuple([await self._blobs.get(key) for key in job.reference_keys])
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
        )
        reporter = ProgressReporter(
            asyncio.get_running_loop(), self._events, job, self._settings.progress_interval_s
        )
        try:
            async with self._gpu:
                result = await asyncio.to_thread(
                    self._backend.generate, request, reporter, CancelToken()
                )
        except PermanentError as exc:
            await reporter.flush()
            await self._failed(job, exc, retryable=False)
            return
        except RetryableError:
            raise
        except Exception as exc:  # a backend crash (OOM, driver): this image, not the message
            log.exception("event=generation_error job_id=%s index=%d", img.job_id, img.image_index)
            await reporter.flush()
            await self._failed(job, exc, retryable=True)
            return
        await reporter.flush()
        await self._publish_result(job, request, result, prompt, negative, queue_wait_ms)

    async def _publish_result(
        self,
        job: GenerateImage,
        request: GenerationRequest,
        result: GeneratedImage,
        prompt: str,
        negative: str,
        queue_wait_ms: int,
    ) -> None:
        img = job.image
        blob = await put_staging(self._blobs, result.png, "image/png")
        cost = self._backend.cost_usd(result.seconds)
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
            ),
            provider=self._settings.generator.provider,
            cost_usd=cost,
            timings=Timings(queue_wait_ms=queue_wait_ms, generation_ms=int(result.seconds * 1000)),
        )
        await self._publisher.publish(self._topics.images_raw, img.job_id, raw)
        await self._events.emit(
            GenerationCompleted(
                **image_envelope(img, "generation_completed", img.attempt),
                data=GenerationCompletedData(
                    image_id=img.image_id,
                    image_index=img.image_index,
                    duration_ms=int(result.seconds * 1000),
                    backend=result.backend,
                    model=result.model,
                    seed=request.seed,
                    cost_usd=cost,
                ),
            )
        )

    async def _failed(self, job: GenerateImage, exc: BaseException, *, retryable: bool) -> None:
        img = job.image
        final = not retryable or img.attempt >= self._settings.max_attempts
        log.warning(
            "event=generation_failed job_id=%s index=%d attempt=%d final=%s error=%r",
            img.job_id,
            img.image_index,
            img.attempt,
            final,
            str(exc),
        )
        await self._events.emit(
            GenerationFailed(
                **image_envelope(img, "generation_failed", img.attempt),
                data=GenerationFailedData(
                    image_id=img.image_id,
                    image_index=img.image_index,
                    attempt=img.attempt,
                    error_type=type(exc).__name__,
                    error=str(exc)[:500],
                    retryable=retryable,
                    final=final,
                ),
            )
        )
