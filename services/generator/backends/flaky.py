"""A testing aid: the demo backend failing a share of its calls at random, like a shaky provider.

Fault tests (`tests/e2e/test_chaos_provider.py`) run the stack with this provider first in
the catalogue and the plain demo backend behind it, to show that retries and failover keep
the success rate up when a provider fails a fifth of its calls. A failure is what a hosted
provider's 503 becomes (`ProviderRetryableError`), so it takes the same path through the
worker, the scheduler's retries and provider health as a real outage would.

Settings (`IMAGEGEN_FLAKY_*`): `FAILURE_RATE` (0-1, default 0.2) and `SEED` (unset: a fresh
random stream per process; set: the same sequence of failures on every run).
"""

from __future__ import annotations

import dataclasses
import random
import threading

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationRequest,
    ImageBackend,
    ProgressCallback,
)
from services.generator.backends.hosted_http import ProviderRetryableError

FLAKY = "flaky"


class FlakySettings(BaseSettings):
    """`IMAGEGEN_FLAKY_*`: how often the flaky provider fails, and its random stream."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_FLAKY_", extra="ignore")

    failure_rate: float = Field(default=0.2, ge=0, le=1, description="Share of calls that fail.")
    seed: int | None = Field(default=None, description="Fixes the sequence of failures.")


class FlakyBackend:
    """Wraps another backend; each call fails with probability `failure_rate` before it runs."""

    name = FLAKY

    def __init__(self, inner: ImageBackend, failure_rate: float, seed: int | None = None) -> None:
        if not 0 <= failure_rate <= 1:
            raise ValueError(f"failure_rate must be between 0 and 1, not {failure_rate}")
        self.inner = inner
        self.model = inner.model
        self.failure_rate = failure_rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # lanes may call from several threads
        self.calls = 0
        self.failures = 0

    def load(self) -> None:
        self.inner.load()

    def _fails(self) -> bool:
        with self._lock:
            self.calls += 1
            failed = self._random.random() < self.failure_rate
            self.failures += failed
            return failed

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        if self._fails():
            raise ProviderRetryableError(
                FLAKY, f"injected failure (rate {self.failure_rate:g})", status=503
            )
        image = self.inner.generate(request, on_progress, cancel)
        return dataclasses.replace(image, backend=self.name)

    def cost_usd(self, seconds: float) -> float:
        return self.inner.cost_usd(seconds)


def build_flaky(*, price_per_hour: float, device: str | None) -> FlakyBackend:
    """The demo backend behind a `FlakyBackend` configured from `IMAGEGEN_FLAKY_*`."""
    from services.generator.backends.demo_faces import DemoFaceBackend

    settings = FlakySettings()
    inner = DemoFaceBackend(price_per_hour=price_per_hour, device=device)
    return FlakyBackend(inner, settings.failure_rate, settings.seed)
