"""Micro-batching: images of one model and shape that wait together run in one pipeline call.

A GPU runs a batch of 4 images in far less than 4 times the time of one; the batcher gives
it batches without making anyone wait long:
- Each waiting image is filed under its batch key: (provider, the backend's key - model,
  size, steps, guidance, conditioning). Images of different keys never share a call.
- One runner serves the GPU: it takes the group of the OLDEST waiting image (first come,
  first served, so the tier order the consumer picked is kept) and runs it when the group
  is full (`max_size`), when its oldest image has waited `max_wait_s`, or when every
  consumer lane already has an image waiting (nothing more can arrive). So no image waits
  longer than `max_wait_s` for company; waiting for a busy GPU is not waiting for company.
- Self-hosted backends without `generate_batch` (demo) run one image at a time, at once.
- Hosted backends (`self_hosted = False`: OpenAI, Replicate, fal, RunPod) spend an image
  waiting on HTTP, not on our GPU: up to `hosted_concurrency` of them run at once, on their
  own threads, never holding the GPU lock - so a slow provider neither blocks the GPU nor
  queues behind it. Limit: lanes take records in topic order without knowing their
  provider, so a hosted record beyond the limit holds its lane until a slot frees; the
  GPU lanes come on top of the hosted ones to keep that rare.

Where several images come from: `loops.jobs_loop` runs several consumer lanes over the one
weighted tier consumer, each lane handling one record at a time through `Generator.on_job`;
their concurrent `generate` calls meet here. Offsets stay safe because `CommitInOrder`
commits a record only once every earlier record of its partition is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from services.generator.backends import (
    CancelToken,
    GeneratedImage,
    GenerationRequest,
    ImageBackend,
    ProgressCallback,
)

log = logging.getLogger(__name__)
_T = TypeVar("_T")


@runtime_checkable
class BatchingBackend(Protocol):
    """A backend that can make several images in one call."""

    def batch_key(self, request: GenerationRequest) -> Hashable:
        """Requests with equal keys may share one `generate_batch` call."""
        ...

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_progress_list: Sequence[ProgressCallback],
        cancels: Sequence[CancelToken],
    ) -> list[GeneratedImage | Exception]:
        """One image or error per request, in order."""
        ...


@dataclass
class _Waiting:
    backend: BatchingBackend
    request: GenerationRequest
    on_progress: ProgressCallback
    cancel: CancelToken
    arrived: float
    result: asyncio.Future[GeneratedImage | Exception] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MicroBatcher:
    """Serialises one GPU's work and batches compatible images that wait together."""

    def __init__(
        self,
        max_size: int,
        max_wait_s: float,
        capacity: int | None = None,
        *,
        hosted_concurrency: int = 1,
    ) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        """How many images can wait at most (the consumer lanes); None: unknown."""
        self.hosted_concurrency = hosted_concurrency
        self._gpu = asyncio.Lock()
        self._hosted_slots = asyncio.Semaphore(hosted_concurrency)
        self._hosted_pool: ThreadPoolExecutor | None = None
        self.hosted_in_flight = 0
        """Lanes busy with a hosted image: they cannot bring an image to batch meanwhile."""
        # Every model call on ONE thread. CPU torch keeps OpenMP state per calling thread;
        # measured here, a batch ran ~2.5x slower on a thread after torch had run on
        # another one, and asyncio.to_thread may pick any thread of its pool.
        self._thread: ThreadPoolExecutor | None = None
        self._groups: dict[Hashable, list[_Waiting]] = {}
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.batch_sizes: list[int] = []

    async def generate(
        self,
        provider: str,
        backend: ImageBackend,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        """The image of `request`, made alone or together with compatible waiting ones."""
        if not getattr(backend, "self_hosted", True):
            return await self._hosted(backend, request, on_progress, cancel)
        if self.max_size <= 1 or not isinstance(backend, BatchingBackend):
            async with self._gpu:
                return await self._on_gpu_thread(backend.generate, request, on_progress, cancel)
        key = (provider, backend.batch_key(request))
        waiting = _Waiting(backend, request, on_progress, cancel, time.monotonic())
        self._groups.setdefault(key, []).append(waiting)
        self._arrived.set()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="micro-batcher")
        # shield: a lane stopped mid-wait must not cancel the shared future of a batch.
        outcome = await asyncio.shield(waiting.result)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _on_gpu_thread(self, call: Callable[..., _T], *args: object) -> _T:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="generator-gpu")
        run = functools.partial(contextvars.copy_context().run, call, *args)
        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def _hosted(
        self,
        backend: ImageBackend,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        """A hosted provider's image, beside the GPU's work; `hosted_concurrency` at most."""
        self.hosted_in_flight += 1
        self._arrived.set()  # the batch runner recounts who can still arrive
        try:
            async with self._hosted_slots:
                if self._hosted_pool is None:
                    self._hosted_pool = ThreadPoolExecutor(
                        self.hosted_concurrency, thread_name_prefix="generator-hosted"
                    )
                run = functools.partial(
                    contextvars.copy_context().run, backend.generate, request, on_progress, cancel
                )
                return await asyncio.get_running_loop().run_in_executor(self._hosted_pool, run)
        finally:
            self.hosted_in_flight -= 1

    def _waiting_count(self) -> int:
        # Lanes on hosted images count as here: they bring no image to batch meanwhile.
        return sum(len(group) for group in self._groups.values()) + self.hosted_in_flight

    async def _run(self) -> None:
        try:
            await self._serve()
        finally:
            # Only reached early when the loop itself is going away: answer every waiter.
            for group in self._groups.values():
                for waiting in group:
                    if not waiting.result.done():
                        waiting.result.set_result(RuntimeError("generator is stopping"))

    async def _serve(self) -> None:
        while self._groups:
            key, group = min(self._groups.items(), key=lambda item: item[1][0].arrived)
            wait = group[0].arrived + self.max_wait_s - time.monotonic()
            everyone_here = self.capacity is not None and self._waiting_count() >= self.capacity
            if len(group) < self.max_size and wait > 0 and not everyone_here:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), wait)
                continue
            batch, rest = group[: self.max_size], group[self.max_size :]
            if rest:
                self._groups[key] = rest
            else:
                del self._groups[key]
            await self._generate(batch)

    async def _generate(self, batch: list[_Waiting]) -> None:
        backend = batch[0].backend
        # What waiters get if this task is cancelled mid-run (the loop is going away).
        outcomes: list[GeneratedImage | Exception] = [RuntimeError("generator is stopping")] * len(
            batch
        )
        try:
            async with self._gpu:
                outcomes = await self._on_gpu_thread(
                    backend.generate_batch,
                    [w.request for w in batch],
                    [w.on_progress for w in batch],
                    [w.cancel for w in batch],
                )
        except Exception as exc:  # the call itself failed: every image of it did
            log.exception("event=batch_failed size=%d", len(batch))
            outcomes = [exc] * len(batch)
        finally:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if not waiting.result.done():
                    waiting.result.set_result(outcome)
        self.batch_sizes.append(len(batch))
        log.debug("event=batch_done size=%d", len(batch))
