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
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol

import httpx
from PIL import Image, ImageOps
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from imagegen.errors import ConfigurationError, PermanentError, RetryableError
from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ProgressCallback,
    encode_png,
)

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
_CANCEL_CHECK_S = 0.05
_PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 410, 413, 415, 422})


class ProviderRetryableError(RetryableError):
    """A hosted provider failed in a way that may pass later (5xx, timeout, rate limit)."""

    def __init__(
        self, provider: str, message: str, *, status: int | None = None, retry_after_s: float = 0
    ) -> None:
        self.provider = provider
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(f"{provider}: {message}")


class ProviderRateLimited(ProviderRetryableError):
    """HTTP 429; `retry_after_s` is the provider's Retry-After (0 when it gave none)."""


class ProviderPermanentError(PermanentError):
    """A hosted provider refused the request or the job failed; retrying cannot help."""

    def __init__(self, provider: str, message: str, *, status: int | None = None) -> None:
        self.provider = provider
        self.status = status
        super().__init__(f"{provider}: {message}")


def retry_after_seconds(value: str | None) -> float:
    """Retry-After as seconds: delta-seconds or an HTTP date; 0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0


def provider_message(response: httpx.Response) -> str:
    """The provider's own words for a failed response (JSON detail/title/error, or text)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "error", "message", "title"):
            value = body.get(key)
            if value:
                return str(value)[:300]
    return str(body)[:300]


def status_error(
    provider: str, response: httpx.Response, key_setting: str
) -> ProviderRetryableError | ProviderPermanentError:
    """The error an HTTP status >= 400 from `provider` means."""
    status = response.status_code
    text = f"HTTP {status}: {provider_message(response)}"
    if status == 429:
        wait = retry_after_seconds(response.headers.get("retry-after"))
        return ProviderRateLimited(
            provider,
            f"{text} (rate limited; retry after {wait:g}s)",
            status=429,
            retry_after_s=wait,
        )
    if status in (401, 403):
        return ProviderPermanentError(provider, f"{text} (check {key_setting})", status=status)
    if status in _PERMANENT_STATUSES:
        return ProviderPermanentError(provider, text, status=status)
    return ProviderRetryableError(provider, text, status=status)


class ProviderTransport(httpx.BaseTransport):
    """An httpx transport that raises our error types for failed calls to one provider."""

    def __init__(
        self, provider: str, key_setting: str, inner: httpx.BaseTransport | None = None
    ) -> None:
        self._provider = provider
        self._key_setting = key_setting
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        where = f"{request.method} {request.url.copy_with(query=None)}"
        try:
            response = self._inner.handle_request(request)
        except httpx.TimeoutException as exc:
            raise ProviderRetryableError(self._provider, f"{where} timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise ProviderRetryableError(self._provider, f"{where} failed: {exc!r}") from exc
        if response.status_code >= 400:
            response.read()
            response.close()
            raise status_error(self._provider, response, self._key_setting)
        return response

    def close(self) -> None:
        self._inner.close()


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


def data_uri(image: bytes) -> str:
    mime = "image/jpeg" if image[:3] == b"\xff\xd8\xff" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def decode_inline(provider: str, output: str) -> bytes | None:
    """A data URI or bare base64 image as bytes; None when `output` is a URL."""
    if output.startswith(("http://", "https://")):
        return None
    payload = output.split(",", 1)[1] if output.startswith("data:") else output
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderRetryableError(
            provider, f"output is neither a URL nor base64: {exc}"
        ) from exc


def download(provider: str, client: httpx.Client, output: str) -> bytes:
    """An output reference's bytes; URLs are fetched without our API key."""
    inline = decode_inline(provider, output)
    if inline is not None:
        return inline
    with client.stream("GET", output) as response:
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > _MAX_OUTPUT_BYTES:
                raise ProviderRetryableError(provider, f"output {output} exceeds 64 MiB")
            chunks.append(chunk)
    return b"".join(chunks)


def fit_png(provider: str, data: bytes, width: int, height: int) -> bytes:
    """The output as PNG of exactly width x height (cropped to the aspect, then resized)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ProviderRetryableError(provider, f"output is not a readable image: {exc}") from exc
    if image.size != (width, height):
        image = ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    return encode_png(image)


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
