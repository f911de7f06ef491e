"""Per-step progress from a backend's worker thread to throttled events on the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

from imagegen.events import EventEmitter
from schemas.events import GenerationProgress, GenerationProgressData, image_event
from schemas.jobs import GenerateImage


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
        event = image_event(
            GenerationProgress,
            img,
            img.attempt,
            step,
            data=GenerationProgressData(
                image_id=img.image_id, image_index=img.image_index, step=step, total_steps=total
            ),
        )
        self.sent.append(asyncio.run_coroutine_threadsafe(self._emitter.emit(event), self._loop))

    async def flush(self) -> None:
        for future in self.sent:
            await asyncio.wrap_future(future)
