"""HTTP plumbing of the hosted backends: error types and mapping, the transport, outputs.

`ProviderTransport` sits under each provider's client and raises our error types for
failed calls before the client sees them (see `hosted.py` for what each means). A
provider whose safety-system refusals have a documented shape gives the transport a
`RefusalCheck`, so a refusal is a `ProviderContentPolicyError` rather than any 4xx.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx
from PIL import Image, ImageOps

from imagegen.errors import PermanentError, RetryableError
from schemas.events import ErrorType
from services.generator.backends.base import encode_png

_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
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


class ProviderContentPolicyError(ProviderPermanentError):
    """The provider's safety system refused the prompt or a reference image.

    The prompt is at fault, not the provider: the worker reports it with `error_type`
    ContentPolicyViolation and the scheduler fails the image at once, without retrying it
    or sending it to another provider, and without counting it against provider health.
    """

    error_type = ErrorType.CONTENT_POLICY_VIOLATION.value


RefusalCheck = Callable[[httpx.Response], str | None]
"""A failed response's refusal reason when it is a safety-system refusal, else None."""


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
    provider: str,
    response: httpx.Response,
    key_setting: str,
    refusal: RefusalCheck | None = None,
) -> ProviderRetryableError | ProviderPermanentError:
    """The error an HTTP status >= 400 from `provider` means."""
    status = response.status_code
    refused = refusal(response) if refusal is not None and 400 <= status < 500 else None
    if refused is not None:
        return ProviderContentPolicyError(
            provider, f"HTTP {status}: refused by its safety system: {refused}", status=status
        )
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
        self,
        provider: str,
        key_setting: str,
        inner: httpx.BaseTransport | None = None,
        *,
        refusal: RefusalCheck | None = None,
    ) -> None:
        self._provider = provider
        self._key_setting = key_setting
        self._inner = inner or httpx.HTTPTransport()
        self._refusal = refusal

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
            raise status_error(self._provider, response, self._key_setting, self._refusal)
        return response

    def close(self) -> None:
        self._inner.close()


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
