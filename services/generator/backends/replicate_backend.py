"""Replicate's predictions API through its official client (`replicate`).

A model is `owner/name` (its latest version: `POST /v1/models/{owner}/{name}/predictions`)
or `owner/name:version` (`POST /v1/predictions` with that version). With
`IMAGEGEN_REPLICATE_SYNC_WAIT_S` > 0 the create call sends `Prefer: wait=N`, so a fast
model answers in the same request; otherwise, and when it is not done in time, the
prediction is polled (`GET /v1/predictions/{id}`) and cancelled with
`POST /v1/predictions/{id}/cancel`. Progress comes from the tqdm lines of its logs.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from replicate.client import Client
from replicate.prediction import Prediction

from services.generator.backends.base import GenerationRequest
from services.generator.backends.hosted import (
    HostedBackend,
    HostedSettings,
    ProviderTransport,
    Snapshot,
    State,
    download,
)

PROVIDER = "replicate"
KEY_SETTING = "IMAGEGEN_REPLICATE_API_KEY"
_STATES: dict[str, State] = {
    "starting": "queued",
    "processing": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "canceled": "cancelled",
}


class ReplicateSettings(HostedSettings):
    """`IMAGEGEN_REPLICATE_*`."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_REPLICATE_", extra="ignore")

    base_url: str = "https://api.replicate.com"
    model: str = "black-forest-labs/flux-dev"
    prices: dict[str, float] = Field(
        default_factory=lambda: {
            "black-forest-labs/flux-schnell": 0.003,
            "black-forest-labs/flux-dev": 0.025,
            "black-forest-labs/flux-1.1-pro": 0.04,
        }
    )
    price_per_image_usd: float = 0.025
    reference_field: str = "image"
    sync_wait_s: int = Field(
        default=0, ge=0, le=60, description="Prefer: wait=N on create (0: poll only)."
    )


class _Prediction:
    """One prediction, polled through the client."""

    def __init__(self, client: Client, prediction: Prediction) -> None:
        self._client = client
        self.id = prediction.id

    def poll(self) -> Snapshot:
        return snapshot(self._client.predictions.get(self.id))

    def cancel(self) -> None:
        self._client.predictions.cancel(self.id)


def snapshot(prediction: Prediction) -> Snapshot:
    state = _STATES.get(prediction.status, "running")
    progress = prediction.progress
    output: Any = prediction.output
    if isinstance(output, list):
        output = output[0] if output else None
    return Snapshot(
        state=state,
        output=str(output) if state == "succeeded" and output else None,
        progress=(progress.current, progress.total) if progress else None,
        error=str(prediction.error or ""),
    )


class ReplicateApi:
    provider = PROVIDER

    def __init__(self, settings: ReplicateSettings) -> None:
        self._settings = settings
        timeout = httpx.Timeout(settings.request_timeout_s)
        self._client = Client(
            api_token=settings.key(KEY_SETTING),
            base_url=settings.base_url,
            timeout=timeout,  # the client widens the read timeout itself for Prefer: wait
            transport=ProviderTransport(PROVIDER, KEY_SETTING),
        )
        # Output URLs live on Replicate's CDN: fetched without the API token.
        self._files = httpx.Client(
            timeout=timeout,
            follow_redirects=True,
            transport=ProviderTransport(PROVIDER, KEY_SETTING),
        )

    def build_input(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": request.prompt,
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "output_format": "png",
        }
        if request.negative_prompt:
            payload["negative_prompt"] = request.negative_prompt
        if request.img2img_strength is not None and request.reference_images:
            payload["prompt_strength"] = request.img2img_strength
        payload.update(self._settings.references(request))
        payload.update(self._settings.extra_input)
        return payload

    def submit(self, request: GenerationRequest, model: str) -> tuple[_Prediction, Snapshot]:
        payload = self.build_input(request)
        wait: dict[str, Any] = (
            {"wait": self._settings.sync_wait_s} if self._settings.sync_wait_s else {}
        )
        name, _, version_id = model.partition(":")
        if version_id:
            prediction = self._client.predictions.create(version=version_id, input=payload, **wait)
        else:
            # models.predictions directly: predictions.create(model=...) drops `wait`.
            prediction = self._client.models.predictions.create(model=name, input=payload, **wait)
        return _Prediction(self._client, prediction), snapshot(prediction)

    def fetch(self, output: str) -> bytes:
        return download(PROVIDER, self._files, output)


def build(settings: ReplicateSettings | None = None) -> HostedBackend:
    """The Replicate backend from `IMAGEGEN_REPLICATE_*` (or `settings`)."""
    settings = settings or ReplicateSettings()
    return HostedBackend(
        ReplicateApi(settings), settings, versions={"replicate": version("replicate")}
    )
