"""fal.ai's queue API through its client (`fal-client`).

`submit` posts to `{queue}/{model}` and gets back the request's status, response and
cancel URLs; the status (`IN_QUEUE` with a queue position, `IN_PROGRESS` with logs,
`COMPLETED` with an error or not) is polled, the result (`{"images": [{"url", ...}]}`)
read, and a cancel is `PUT {cancel_url}`.

A prompt or image fal's content checker refuses is one of its documented model errors:
HTTP 422 (on the result, or on submission) whose `detail` is a list of
`{loc, msg, type: "content_policy_violation", url}`; `fal_refusal` recognises it, so it
becomes a `ProviderContentPolicyError` (final for the image) instead of a plain 422.
With its safety checker on (the default), fal may instead finish the job and flag the
image in `has_nsfw_concepts` (and blank it): that is the same refusal, not an image to
store and bill.

fal-client takes its queue host from the environment at import time and always speaks
https; to point it at another endpoint (a local server in tests, a proxy) without
touching the process environment, `IMAGEGEN_FAL_BASE_URL` is applied by a transport that
rewrites the queue host's URLs. Later calls use the URLs the queue itself returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import version
from typing import Any

import fal_client
import httpx
from fal_client.client import QUEUE_URL_FORMAT, USER_AGENT, Completed, InProgress, Queued
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.generator.backends.base import GenerationRequest
from services.generator.backends.hosted import (
    HostedBackend,
    HostedSettings,
    ProviderTransport,
    Snapshot,
    download,
    parse_progress,
)

PROVIDER = "fal"
KEY_SETTING = "IMAGEGEN_FAL_API_KEY"
DEFAULT_QUEUE_URL = QUEUE_URL_FORMAT.rstrip("/")
_RETRYABLE_ERROR_TYPES = ("timeout", "internal", "unavailable", "server_error")
CONTENT_POLICY_TYPE = "content_policy_violation"


class FalSettings(HostedSettings):
    """`IMAGEGEN_FAL_*`."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_FAL_", extra="ignore")

    base_url: str = DEFAULT_QUEUE_URL
    model: str = "fal-ai/flux/dev"
    prices: dict[str, float] = Field(
        default_factory=lambda: {
            "fal-ai/flux/schnell": 0.003,
            "fal-ai/flux/dev": 0.025,
            "fal-ai/flux-pro/v1.1": 0.04,
        }
    )
    price_per_image_usd: float = 0.025
    reference_field: str = "image_url"


class RebaseTransport(httpx.BaseTransport):
    """Sends requests for `source` (a URL prefix) to `target` instead."""

    def __init__(self, source: str, target: str, inner: httpx.BaseTransport) -> None:
        self._source = source.rstrip("/") + "/"
        self._target = target.rstrip("/") + "/"
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if self._source != self._target and url.startswith(self._source):
            moved = httpx.URL(self._target + url[len(self._source) :])
            headers = request.headers.copy()
            headers["Host"] = moved.netloc.decode("ascii")
            request = httpx.Request(
                request.method,
                moved,
                headers=headers,
                stream=request.stream,
                extensions=request.extensions,
            )
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class _Client(fal_client.SyncClient):
    """fal-client's sync client on our transport (error mapping, base URL)."""

    transport: httpx.BaseTransport | None = None

    @cached_property
    def _client(self) -> httpx.Client:
        return httpx.Client(
            transport=self.transport,
            headers={"Authorization": f"Key {self.key}", "User-Agent": USER_AGENT},
            timeout=self.default_timeout,
            follow_redirects=True,
        )


class _Request:
    """One queued request, polled through its handle."""

    def __init__(self, handle: fal_client.SyncRequestHandle) -> None:
        self._handle = handle
        self.id = handle.request_id

    def poll(self) -> Snapshot:
        status = self._handle.status(with_logs=True)
        if isinstance(status, Queued):
            return Snapshot("queued")
        if isinstance(status, InProgress):
            return Snapshot("running", progress=_log_progress(status.logs))
        assert isinstance(status, Completed)
        if status.error:
            kind = status.error_type or ""
            return Snapshot(
                "failed",
                error=f"{status.error} ({kind})" if kind else status.error,
                # A timeout or an infrastructure fault may pass on a new attempt; a runner
                # or validation error will not.
                retryable=any(word in kind for word in _RETRYABLE_ERROR_TYPES),
            )
        return result_snapshot(self._handle.get(), _log_progress(status.logs))

    def cancel(self) -> None:
        self._handle.cancel()


def _log_progress(logs: list[dict[str, Any]] | None) -> tuple[int, int] | None:
    text = "\n".join(str(entry.get("message", "")) for entry in logs or [])
    return parse_progress(text)


def result_snapshot(result: dict[str, Any], progress: tuple[int, int] | None) -> Snapshot:
    images = result.get("images") or ([result["image"]] if result.get("image") else [])
    if not images:
        return Snapshot("failed", error=f"result has no images: {sorted(result)}", retryable=True)
    flags = result.get("has_nsfw_concepts")
    if isinstance(flags, list) and flags and flags[0] is True:
        return Snapshot(
            "failed",
            error="the safety checker flagged the image (has_nsfw_concepts)",
            refused=True,
        )
    first = images[0]
    url = first.get("url") if isinstance(first, dict) else first
    return Snapshot("succeeded", output=str(url), progress=progress)


def fal_refusal(response: httpx.Response) -> str | None:
    """The content checker's message when a failed response is fal's refusal, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, list):
        return None
    for item in detail:
        if isinstance(item, dict) and item.get("type") == CONTENT_POLICY_TYPE:
            # `input` may echo the whole prompt back: only the message and the field are kept.
            loc = item.get("loc")
            field = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
            message = str(item.get("msg") or "content flagged")[:300]
            return f"{message} ({CONTENT_POLICY_TYPE}{f' in {field}' if field else ''})"
    return None


class FalApi:
    provider = PROVIDER

    def __init__(self, settings: FalSettings) -> None:
        self._settings = settings
        self._client = _Client(
            key=settings.key(KEY_SETTING),
            default_timeout=settings.request_timeout_s,
            transport=RebaseTransport(
                DEFAULT_QUEUE_URL,
                settings.base_url,
                ProviderTransport(PROVIDER, KEY_SETTING, refusal=fal_refusal),
            ),
        )
        # Result images live on fal's CDN: fetched without the key.
        self._files = httpx.Client(
            timeout=settings.request_timeout_s,
            follow_redirects=True,
            transport=ProviderTransport(PROVIDER, KEY_SETTING),
        )

    def build_input(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": request.prompt,
            "seed": request.seed,
            "image_size": {"width": request.width, "height": request.height},
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "num_images": 1,
            "output_format": "png",
        }
        if request.negative_prompt:
            payload["negative_prompt"] = request.negative_prompt
        if request.img2img_strength is not None and request.reference_images:
            payload["strength"] = request.img2img_strength
        payload.update(self._settings.references(request))
        payload.update(self._settings.extra_input)
        return payload

    def submit(self, request: GenerationRequest, model: str) -> tuple[_Request, Snapshot]:
        handle = self._client.submit(model, self.build_input(request))
        return _Request(handle), Snapshot("queued")

    def fetch(self, output: str) -> bytes:
        return download(PROVIDER, self._files, output)


def build(settings: FalSettings | None = None) -> HostedBackend:
    """The fal.ai backend from `IMAGEGEN_FAL_*` (or `settings`)."""
    settings = settings or FalSettings()
    return HostedBackend(FalApi(settings), settings, versions={"fal_client": version("fal-client")})
