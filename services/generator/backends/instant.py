"""A backend that does no compute: a solid-colour PNG of the requested size, at once.

For measuring what the engine itself costs (queues, hops, storage, events) with the model
taken out: benchmarks (`bench/orchestration.py`) and load tests run the stack with it.
The colour follows the seed, so different images have different bytes (and staging keys).
"""

from __future__ import annotations

import time

from PIL import Image

from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ProgressCallback,
    encode_png,
)

INSTANT_MODEL = "instant-solid-colour"


def solid_colour(seed: int) -> tuple[int, int, int]:
    """A mid-tone colour from the seed (never black or white, so exposure checks pass)."""
    return (64 + seed % 128, 64 + (seed // 128) % 128, 64 + (seed // 16_384) % 128)


class InstantBackend:
    """Answers every request immediately with a solid-colour image; costs nothing."""

    name = "instant"

    def __init__(self, model: str | None = None) -> None:
        self.model = model or INSTANT_MODEL

    def load(self) -> None:
        """Nothing to load."""

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        if cancel.is_set():
            raise GenerationCancelled("cancelled before generation started")
        started = time.perf_counter()
        image = Image.new("RGB", (request.width, request.height), solid_colour(request.seed))
        png = encode_png(image)
        on_progress(1, 1)
        return GeneratedImage(
            png=png,
            width=request.width,
            height=request.height,
            backend=self.name,
            model=self.model,
            device="cpu",
            versions={},
            demo=True,
            steps_run=1,
            seconds=time.perf_counter() - started,
        )

    def cost_usd(self, seconds: float) -> float:
        return 0.0
