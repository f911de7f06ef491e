"""OpenAI's images API (gpt-image-1, dall-e-3) as an `ImageBackend`, through the official SDK.

- The job's model picks the API model; its quality tier maps to the model's own quality
  (gpt-image-1 low/medium/high, dall-e-3 standard/hd). The API makes a few fixed sizes:
  the one closest in aspect ratio is asked for, then centre-cropped to the requested
  aspect and resized locally, so the image has exactly the requested size.
- gpt-image-1 with reference images uses `images.edit` with them (conditioning "edit"),
  which is how it keeps a character's face; dall-e-3 has no edits and draws from the
  prompt alone. There is no negative prompt in the API: it is folded into the prompt.
- Progress is 0 then 1 of 1 (no steps). The cancel token is read before the request
  and after it: an HTTP request in flight cannot be interrupted, and an image that
  arrives after a cancel is discarded although the provider charged for it.
- Cost is the price table's per-image price for model/quality/size; `self_hosted` is
  False so the worker reports no GPU seconds. The SDK's own retries are off: failures are
  mapped once to retryable / permanent errors and the scheduler retries or fails over - but
  a safety-system refusal (400 `content_policy_violation` / `moderation_blocked`) ends the
  image at once, on no other provider (`openai_errors.py`).
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from typing import Any

import openai

from imagegen.errors import ConfigurationError
from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    InvalidGenerationRequest,
    ProgressCallback,
    decode_image,
    encode_png,
)
from services.generator.backends.hosted_http import ProviderRetryableError, fit_png
from services.generator.backends.openai_errors import (
    API_KEY_SETTING,
    PROVIDER,
    map_openai_error,
)
from services.generator.backends.openai_models import MODELS, ModelSpec, PriceTable
from services.generator.backends.openai_settings import OpenAISettings

# gpt-image-1 takes at most 16 input images per edit.
MAX_EDIT_IMAGES = 16


class OpenAIImageBackend:
    """Images from OpenAI's API; one client, opened by `load()`, shared by worker threads."""

    name = PROVIDER
    self_hosted = False

    def __init__(self, settings: OpenAISettings) -> None:
        self.model = settings.model
        self._settings = settings
        self._client: openai.OpenAI | None = None
        self._prices: PriceTable | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Check the settings and build the client; no request is sent."""
        with self._lock:
            if self._client is not None:
                return
            s = self._settings
            if s.api_key is None or not s.api_key.get_secret_value().strip():
                raise ConfigurationError(
                    f"the openai backend needs an API key: set {API_KEY_SETTING}"
                )
            if s.model not in MODELS:
                raise ConfigurationError(
                    f"IMAGEGEN_OPENAI_MODEL={s.model!r} is not one of {sorted(MODELS)}"
                )
            if s.input_fidelity not in (None, "high", "low"):
                raise ConfigurationError(
                    f"IMAGEGEN_OPENAI_INPUT_FIDELITY must be high or low, got {s.input_fidelity!r}"
                )
            prices = PriceTable.with_overrides(s.prices)
            for spec in MODELS.values():
                prices.check_covers(spec)
            self._prices = prices
            self._client = openai.OpenAI(
                api_key=s.api_key.get_secret_value(),
                organization=s.organization,
                base_url=s.base_url,
                timeout=s.timeout_s,
                max_retries=s.max_retries,
            )

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        self.load()
        assert self._client is not None and self._prices is not None  # set by load()
        started = time.perf_counter()
        spec = model_spec(request.model or self.model)
        quality = spec.provider_quality(request.quality)
        size = spec.closest_size(request.width, request.height)
        images, note = character_references(request)
        prompt = fold_prompt(request.prompt, request.negative_prompt, spec.max_prompt_chars)
        if spec.edits and note and len(prompt) + len(note) + 2 <= spec.max_prompt_chars:
            prompt = f"{prompt}\n\n{note}"
        references = edit_files(images) if spec.edits else []
        if cancel.is_set():
            raise GenerationCancelled("job cancelled before the openai request was sent")
        on_progress(0, 1)
        options: dict[str, Any] = {
            "model": spec.name,
            "prompt": prompt,
            "n": 1,
            "size": size,
            "quality": quality,
        }
        if request.request_id:
            options["extra_headers"] = {"X-Client-Request-Id": request.request_id}
        try:
            if references:
                if self._settings.input_fidelity:
                    options["input_fidelity"] = self._settings.input_fidelity
                response = self._client.images.edit(image=references, **options)
            elif spec.name == "dall-e-3":
                response = self._client.images.generate(response_format="b64_json", **options)
            else:  # GPT image models always answer in base64 and refuse response_format
                response = self._client.images.generate(output_format="png", **options)
        except openai.OpenAIError as exc:
            raise map_openai_error(exc) from exc
        if cancel.is_set():
            raise GenerationCancelled("job cancelled while the openai request was in flight")
        raw, revised_prompt = _first_image(response)
        width, height = request.width, request.height
        png = fit_png(PROVIDER, raw, width, height)
        on_progress(1, 1)
        versions = {
            "openai": openai.__version__,
            "model": spec.name,
            "size": size,
            "quality": quality,
            "endpoint": "images.edit" if references else "images.generate",
            "references": str(len(references)),
        }
        if revised_prompt:
            versions["revised_prompt"] = revised_prompt
        return GeneratedImage(
            png=png,
            width=width,
            height=height,
            backend=self.name,
            model=spec.name,
            device="api",
            versions=versions,
            demo=False,
            steps_run=1,
            seconds=time.perf_counter() - started,
            cost_usd=float(self._prices.price(spec.name, quality, size)),
            conditioning="edit" if references else "",
            quality=quality,
        )

    def cost_usd(self, seconds: float) -> float:
        """Nothing per second: API images carry their own per-image price."""
        return 0.0


def build() -> OpenAIImageBackend:
    """The backend from `IMAGEGEN_OPENAI_*` (the hosted-backend registry calls this)."""
    return OpenAIImageBackend(OpenAISettings())


def model_spec(model: str) -> ModelSpec:
    spec = MODELS.get(model)
    if spec is None:
        raise InvalidGenerationRequest(
            f"openai has no image model {model!r}; known models: {', '.join(sorted(MODELS))}"
        )
    return spec


def fold_prompt(prompt: str, negative: str, limit: int) -> str:
    """The prompt with the negative prompt appended (the API has none); never over `limit`."""
    if not prompt.strip():
        raise InvalidGenerationRequest("prompt is empty")
    if len(prompt) > limit:
        raise InvalidGenerationRequest(
            f"prompt is {len(prompt)} characters; the model takes {limit}"
        )
    folded = f"{prompt}\n\nAvoid: {negative}" if negative.strip() else prompt
    # A negative prompt that does not fit is dropped rather than cut mid-word.
    return folded if len(folded) <= limit else prompt


def character_references(request: GenerationRequest) -> tuple[tuple[bytes, ...], str]:
    """The reference images to send, each character's own in turn (a fair share of the 16
    each), and for a multi-character image a line saying which images show whom and where."""
    if not request.regions:
        return request.reference_images, ""
    groups = [r for r in request.regions if r.reference_images]
    if not groups:
        return (), ""
    share = max(MAX_EDIT_IMAGES // len(groups), 1)
    images: list[bytes] = []
    said: list[str] = []
    for region in groups:
        own = region.reference_images[:share]
        first, last = len(images) + 1, len(images) + len(own)
        numbers = f"image {first} shows" if first == last else f"images {first}-{last} show"
        said.append(f"{numbers} {region.name} ({region.placement})")
        images.extend(own)
    return tuple(images), f"Reference {'; '.join(said)}: keep each person's own face."


def edit_files(references: tuple[bytes, ...]) -> list[tuple[str, bytes, str]]:
    """Reference images as PNG uploads (any readable format in, PNG out), at most 16."""
    return [
        (f"reference-{i}.png", encode_png(decode_image(data)), "image/png")
        for i, data in enumerate(references[:MAX_EDIT_IMAGES])
    ]


def _first_image(response: openai.types.ImagesResponse) -> tuple[bytes, str]:
    """The answer's image bytes and revised prompt; a missing image is the provider's fault."""
    if not response.data or not response.data[0].b64_json:
        raise ProviderRetryableError(PROVIDER, "the response has no b64_json image")
    item = response.data[0]
    try:
        raw = base64.b64decode(item.b64_json or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderRetryableError(PROVIDER, f"b64_json is not base64: {exc}") from exc
    return raw, item.revised_prompt or ""
