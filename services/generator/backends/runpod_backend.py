"""RunPod serverless endpoints over HTTP (httpx).

`POST /v2/{endpoint}/run` queues a job (`{"input": ..., "policy": {"executionTimeout"}}`),
`GET /v2/{endpoint}/status/{id}` reports `IN_QUEUE`, `IN_PROGRESS` (with the worker's
progress updates in `output`), `COMPLETED` (with `output`), `FAILED` (`error`),
`CANCELLED` or `TIMED_OUT`; `POST /cancel/{id}` stops it and `POST /retry/{id}` re-queues
a failed or timed-out job under the same id, which we do for timeouts up to
`IMAGEGEN_RUNPOD_PROVIDER_RETRIES` times before giving the attempt back to the scheduler.

The worker's output is read as an image string (URL, data URI or bare base64), or the
first of `images`, or `image`/`image_url`/`url` of an object. A model name maps to an
endpoint id through `IMAGEGEN_RUNPOD_ENDPOINTS`; a name that is not there is the id.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.generator.backends.base import GenerationRequest
from services.generator.backends.hosted import (
    HostedBackend,
    HostedSettings,
    ProviderRetryableError,
    ProviderTransport,
    Snapshot,
    download,
    parse_progress,
)

PROVIDER = "runpod"
KEY_SETTING = "IMAGEGEN_RUNPOD_API_KEY"


class RunPodSettings(HostedSettings):
    """`IMAGEGEN_RUNPOD_*`."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGEN_RUNPOD_", extra="ignore")

    base_url: str = "https://api.runpod.ai"
    model: str = "sdxl"
    endpoints: dict[str, str] = Field(
        default_factory=dict, description="Endpoint id by model name (JSON object)."
    )
    prices: dict[str, float] = Field(default_factory=lambda: {"sdxl": 0.002, "flux-dev": 0.01})
    price_per_image_usd: float = 0.01
    reference_field: str = "image"
    provider_retries: int = Field(default=1, ge=0, description="/retry calls for a timed-out job.")

    def endpoint(self, model: str) -> str:
        return self.endpoints.get(model, model)


class _Job:
    """One job on one endpoint."""

    def __init__(self, api: RunPodApi, endpoint: str, job_id: str) -> None:
        self._api = api
        self._endpoint = endpoint
        self.id = job_id
        self._retries_left = api.settings.provider_retries

    def poll(self) -> Snapshot:
        body = self._api.call("GET", f"/v2/{self._endpoint}/status/{self.id}")
        snap = status_snapshot(body)
        if snap.state == "failed" and snap.retryable and self._retries_left > 0:
            self._retries_left -= 1
            self._api.call("POST", f"/v2/{self._endpoint}/retry/{self.id}")
            return Snapshot("queued")
        return snap

    def cancel(self) -> None:
        self._api.call("POST", f"/v2/{self._endpoint}/cancel/{self.id}")


def image_of(output: Any) -> str | None:
    """The image reference in a worker's output, whatever shape the worker chose."""
    if isinstance(output, str):
        return output or None
    if isinstance(output, list):
        return image_of(output[0]) if output else None
    if isinstance(output, dict):
        if "images" in output:
            return image_of(output["images"])
        for key in ("image", "image_url", "url", "base64"):
            if isinstance(output.get(key), str):
                return str(output[key])
    return None


def _progress_of(output: Any) -> tuple[int, int] | None:
    if isinstance(output, str):
        return parse_progress(output)
    if isinstance(output, dict):
        if isinstance(output.get("step"), int) and isinstance(output.get("total"), int):
            return int(output["step"]), int(output["total"])
        for key in ("progress", "message", "status"):
            if isinstance(output.get(key), str):
                return parse_progress(str(output[key]))
    return None


def status_snapshot(body: dict[str, Any]) -> Snapshot:
    status = str(body.get("status", ""))
    output = body.get("output")
    if status == "IN_QUEUE":
        return Snapshot("queued")
    if status == "IN_PROGRESS":
        return Snapshot("running", progress=_progress_of(output))
    if status == "COMPLETED":
        image = image_of(output)
        if image is None:
            return Snapshot("failed", error="completed without an image in its output")
        return Snapshot("succeeded", output=image)
    if status == "CANCELLED":
        return Snapshot("cancelled")
    if status == "TIMED_OUT":
        return Snapshot("failed", error="timed out on the endpoint", retryable=True)
    if status == "FAILED":
        return Snapshot("failed", error=str(body.get("error") or "the worker failed"))
    return Snapshot("running")  # a status this client does not know yet: keep polling


class RunPodApi:
    provider = PROVIDER

    def __init__(self, settings: RunPodSettings) -> None:
        self.settings = settings
        transport = ProviderTransport(PROVIDER, KEY_SETTING)
        self._client = httpx.Client(
            base_url=settings.base_url,
            headers={"Authorization": f"Bearer {settings.key(KEY_SETTING)}"},
            timeout=settings.request_timeout_s,
            transport=transport,
        )
        self._files = httpx.Client(
            timeout=settings.request_timeout_s,
            follow_redirects=True,
            transport=ProviderTransport(PROVIDER, KEY_SETTING),
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._client.request(method, path, json=body)
        data = response.json() if response.content else {}
        return data if isinstance(data, dict) else {}

    def build_input(self, request: GenerationRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": request.seed,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
        }
        if request.img2img_strength is not None and request.reference_images:
            payload["strength"] = request.img2img_strength
        payload.update(self.settings.references(request))
        payload.update(self.settings.extra_input)
        return payload

    def submit(self, request: GenerationRequest, model: str) -> tuple[_Job, Snapshot]:
        endpoint = self.settings.endpoint(model)
        body = {
            "input": self.build_input(request),
            # The endpoint stops the worker at our deadline too, so it bills no longer.
            "policy": {"executionTimeout": int(self.settings.timeout_s * 1000)},
        }
        answer = self.call("POST", f"/v2/{endpoint}/run", body)
        job_id = str(answer.get("id") or "")
        if not job_id:
            raise ProviderRetryableError(PROVIDER, f"/run answered without a job id: {answer}")
        return _Job(self, endpoint, job_id), status_snapshot(answer)

    def fetch(self, output: str) -> bytes:
        return download(PROVIDER, self._files, output)


def build(settings: RunPodSettings | None = None) -> HostedBackend:
    """The RunPod backend from `IMAGEGEN_RUNPOD_*` (or `settings`)."""
    settings = settings or RunPodSettings()
    return HostedBackend(RunPodApi(settings), settings, versions={"httpx": httpx.__version__})
