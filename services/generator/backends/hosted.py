"""What the hosted-provider backends (Replicate, fal.ai, RunPod) share.

Each provider module supplies a `HostedApi` (submit one image, poll it, cancel it);
`HostedBackend` turns that into the generator's `ImageBackend`: polling with backoff up
to a deadline, the cancel token checked between polls (then the provider's cancel is
called), progress from the provider's status, the output fetched (URL, data URI or bare
base64) and fitted to the requested size, and the price per image from settings.

Errors: every HTTP call goes through `ProviderTransport`, which turns failures into our
types before the provider's client sees them (so a client's own blind retry loop does
not spend minutes ignoring Retry-After): 429, 5xx, timeouts and connection errors are
`ProviderRetryableError`; other 4xx are `ProviderPermanentError` (401/403 name the key's
setting). A provider-side job that ends `failed` is permanent (the same input fails the
same way; the scheduler fails over to the next provider); one that times out or is
cancelled by the provider is retryable.

A safety-system refusal is `ProviderContentPolicyError` instead, final for the image (no
retry, no failover: the prompt is at fault, not the provider) - but only where the
provider's answer says so in a documented, machine-readable way. fal.ai does (its 422
model error of type `content_policy_violation`, see `fal_backend.py`). Replicate's failed
prediction carries only free text (`error`, written by each model: "NSFW content
detected", ...) and a RunPod endpoint's FAILED error is whatever its worker raised, so
those stay ordinary permanent failures and fail over.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from imagegen.errors import ConfigurationError
from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ProgressCallback,
)
from services.generator.backends.hosted_http import (
    ProviderContentPolicyError,
    ProviderPermanentError,
    ProviderRateLimited,
    ProviderRetryableError,
    ProviderTransport,
    data_uri,
    download,
    fit_png,
    status_error,
)

__all__ = [
    "HostedApi",
    "HostedBackend",
    "HostedSettings",
    "ProviderContentPolicyError",
    "ProviderPermanentError",
    "ProviderRateLimited",
    "ProviderRetryableError",
    "ProviderTransport",
    "RemoteJob",
    "Snapshot",
    "State",
    "download",
    "parse_progress",
    "status_error",
]

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_CANCEL_CHECK_S = 0.05


class HostedSettings(BaseSettings):
    """Fields every hosted provider has; each provider subclasses it with its env prefix."""

    api_key: SecretStr | None = None
    base_url: str = ""
    model: str = ""
    prices: dict[str, float] = Field(
        default_factory=dict, description="USD per image by model (JSON object)."
    )
    price_per_image_usd: float = Field(default=0.0, ge=0, description="Models not in `prices`.")
    poll_interval_s: float = Field(default=1.0, gt=0)
    poll_interval_max_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=300.0, gt=0, description="Deadline for one image.")
    request_timeout_s: float = Field(default=30.0, gt=0, description="One HTTP call.")
    rate_limit_wait_max_s: float = Field(
        default=10.0, ge=0, description="Wait at most this long on a 429's Retry-After."
    )
    poll_error_limit: int = Field(default=5, ge=1, description="Failed polls in a row tolerated.")
    reference_field: str = Field(
        default="", description="Input field for reference images (data URIs); empty: none."
    )
    reference_as_list: bool = Field(default=False, description="Send every reference, as a list.")
    extra_input: dict[str, object] = Field(
        default_factory=dict, description="Merged into every input (JSON object)."
    )

    def price_of(self, model: str) -> float:
        return float(self.prices.get(model, self.price_per_image_usd))

    def key(self, setting: str) -> str:
        """The API key, or a ConfigurationError naming `setting` when it is unset."""
        if self.api_key is None or not self.api_key.get_secret_value():
            raise ConfigurationError(f"{setting} is not set")
        return self.api_key.get_secret_value()

    def references(self, request: GenerationRequest) -> dict[str, object]:
        """The reference images as the model wants them: {field: data URI or [data URIs]}."""
        if not self.reference_field or not request.reference_images:
            return {}
        uris = [data_uri(image) for image in request.reference_images]
        return {self.reference_field: uris if self.reference_as_list else uris[0]}


@dataclass(frozen=True)
class Snapshot:
    """What a provider says about one job right now."""

    state: State
    output: str | None = None
    """On success: the image as a URL, a data URI or bare base64."""
    progress: tuple[int, int] | None = None
    error: str = ""
    retryable: bool = False
    """On failure: whether a new attempt may pass (a provider timeout, say)."""
    refused: bool = False
    """On failure: the provider's safety system refused it (final for the image)."""


class RemoteJob(Protocol):
    """One job on a provider."""

    id: str

    def poll(self) -> Snapshot:
        """Its state now."""
        ...

    def cancel(self) -> None:
        """Ask the provider to stop it."""


class HostedApi(Protocol):
    """One provider's API, seen from one image's point of view."""

    provider: str

    def submit(self, request: GenerationRequest, model: str) -> tuple[RemoteJob, Snapshot]:
        """Start one image; the job and its first state (sync APIs may answer done)."""
        ...

    def fetch(self, output: str) -> bytes:
        """The bytes of a succeeded job's output reference."""
        ...


_PROGRESS = re.compile(r"(?:(\d{1,3})%\s*\|[^|]*\|\s*)?(\d+)\s*/\s*(\d+)")
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


def parse_progress(text: str) -> tuple[int, int] | None:
    """Step/total from log text: the last `n/m` (tqdm bars included) or `NN%` (as n/100)."""
    for line in reversed(text.splitlines()):
        steps = _PROGRESS.findall(line)
        if steps:
            _, current, total = steps[-1]
            if int(total) > 0 and int(current) <= int(total):
                return int(current), int(total)
        percents = _PERCENT.findall(line)
        if percents and float(percents[-1]) <= 100:
            return round(float(percents[-1])), 100
    return None


class _Progress:
    """Forwards only new, increasing (step, total) pairs; ends with total-of-total."""

    def __init__(self, callback: ProgressCallback) -> None:
        self._callback = callback
        self._last: tuple[int, int] | None = None

    def report(self, progress: tuple[int, int] | None) -> None:
        if progress is None or progress[0] < 1:
            return
        if self._last is not None and progress[0] <= self._last[0] and progress[1] == self._last[1]:
            return
        self._last = progress
        self._callback(*progress)

    def done(self) -> None:
        total = self._last[1] if self._last else 1
        if self._last != (total, total):
            self._callback(total, total)


class HostedBackend:
    """`ImageBackend` over a hosted provider's API: submit, poll, fetch, fit."""

    self_hosted = False

    def __init__(
        self,
        api: HostedApi,
        settings: HostedSettings,
        *,
        versions: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = api.provider
        self.model = settings.model
        self._api = api
        self._settings = settings
        self._versions = versions or {}
        self._clock = clock
        self._sleep = sleep

    def load(self) -> None:
        """Nothing to load: the model runs at the provider."""

    def cost_usd(self, seconds: float) -> float:
        return self._settings.price_of(self.model)

    def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedImage:
        started = self._clock()
        deadline = started + self._settings.timeout_s
        model = request.model or self.model
        progress = _Progress(on_progress)
        job, snap = self._submit(request, model, deadline, cancel)
        interval, errors = self._settings.poll_interval_s, 0
        while snap.state in ("queued", "running"):
            progress.report(snap.progress)
            wait = min(interval, max(0.0, deadline - self._clock()))
            self._wait(wait, cancel, job)
            if self._clock() >= deadline:
                self._cancel_quietly(job)
                raise ProviderRetryableError(
                    self.name, f"job {job.id} not done within {self._settings.timeout_s:g}s"
                )
            interval = min(interval * 1.5, self._settings.poll_interval_max_s)
            try:
                snap = job.poll()
                errors = 0
            except ProviderRateLimited as exc:
                interval = max(interval, exc.retry_after_s)
            except ProviderRetryableError:
                errors += 1
                if errors >= self._settings.poll_error_limit:
                    raise
        if snap.state == "cancelled":
            if cancel.is_set():
                raise GenerationCancelled(f"{self.name}: job {job.id} cancelled")
            raise ProviderRetryableError(self.name, f"job {job.id} was cancelled by the provider")
        if snap.state == "failed":
            error = snap.error or "no error message"
            if snap.refused:
                raise ProviderContentPolicyError(self.name, f"job {job.id} refused: {error}")
            if snap.retryable:
                raise ProviderRetryableError(self.name, f"job {job.id} failed: {error}")
            raise ProviderPermanentError(self.name, f"job {job.id} failed: {error}")
        if snap.output is None:
            raise ProviderRetryableError(self.name, f"job {job.id} succeeded without an output")
        png = fit_png(self.name, self._api.fetch(snap.output), request.width, request.height)
        progress.report(snap.progress)
        progress.done()
        return GeneratedImage(
            png=png,
            width=request.width,
            height=request.height,
            backend=self.name,
            model=model,
            device=self.name,
            versions={"provider_job": job.id, **self._versions},
            demo=False,
            steps_run=request.steps,
            seconds=self._clock() - started,
            cost_usd=self._settings.price_of(model),
        )

    def _submit(
        self, request: GenerationRequest, model: str, deadline: float, cancel: CancelToken
    ) -> tuple[RemoteJob, Snapshot]:
        """Submit, waiting out 429s whose Retry-After fits the limit and the deadline.

        Only 429s are re-sent: the provider said it did not take the job. After a 5xx or
        a timeout it may have, so that attempt ends and the scheduler decides.
        """
        while True:
            if cancel.is_set():
                raise GenerationCancelled(f"{self.name}: cancelled before submission")
            try:
                return self._api.submit(request, model)
            except ProviderRateLimited as exc:
                wait = exc.retry_after_s
                if wait > self._settings.rate_limit_wait_max_s or self._clock() + wait >= deadline:
                    raise
                self._wait(wait, cancel, None)

    def _wait(self, seconds: float, cancel: CancelToken, job: RemoteJob | None) -> None:
        """Sleep in short slices; on cancel, tell the provider and stop."""
        end = self._clock() + seconds
        while True:
            if cancel.is_set():
                if job is not None:
                    self._cancel_quietly(job)
                    raise GenerationCancelled(f"{self.name}: job {job.id} cancelled")
                raise GenerationCancelled(f"{self.name}: cancelled before submission")
            left = end - self._clock()
            if left <= 0:
                return
            self._sleep(min(left, _CANCEL_CHECK_S))

    def _cancel_quietly(self, job: RemoteJob) -> None:
        # Best effort: the job may have just finished, and the attempt ends either way.
        with contextlib.suppress(ProviderRetryableError, ProviderPermanentError):
            job.cancel()
