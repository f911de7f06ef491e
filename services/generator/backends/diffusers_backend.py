"""The self-hosted backend: a local diffusers pipeline (SD 1.x/2.x, SDXL, FLUX, AutoPipeline's).

One pipeline per process, loaded once, serialised (a pipeline is not re-entrant). Images of
one model and shape are made together by `generate_batch`: one pipeline call, one
`torch.Generator` per image (so each image depends only on its own seed), per-image
prompts, progress and cancel. `generate` is a batch of one through the same code.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from PIL import Image

from imagegen.errors import PermanentError, RetryableError
from services.generator.backends import diffusers_conditioning as conditioning
from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    InvalidGenerationRequest,
    ProgressCallback,
    decode_image,
    encode_png,
    hourly_cost,
)
from services.generator.backends.diffusers_conditioning import Conditioning
from services.generator.backends.diffusers_loading import (
    call_parameters,
    default_device,
    default_dtype,
    image_to_image,
    load_pipeline,
    pipeline_versions,
    size_multiple,
)
from services.generator.backends.diffusers_lora import LoraAdapters
from services.generator.settings import DiffusersSettings

__all__ = ["DiffusersBackend", "default_device", "default_dtype"]


class DiffusersBackend:
    """A diffusers pipeline behind the `ImageBackend` port, with batching."""

    name = "diffusers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        price_per_hour: float = 0.0,
        options: DiffusersSettings | None = None,
    ) -> None:
        self.model = model
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.options = options if options is not None else DiffusersSettings()
        self._price_per_hour = price_per_hour
        self._pipe: Any = None
        self._img2img: Any = None
        self._loras: LoraAdapters | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_pipeline(
        cls, pipe: Any, model: str, *, options: DiffusersSettings | None = None
    ) -> DiffusersBackend:
        """A backend around a pipeline built in memory (benchmarks with random weights)."""
        backend = cls(model, device=str(pipe.device), dtype=pipe.dtype, options=options)
        backend._pipe = pipe
        return backend

    def load(self) -> None:
        with self._lock:
            if self._pipe is None:
                self._pipe = load_pipeline(self.model, self.device, self.dtype, self.options)

    def cost_usd(self, seconds: float) -> float:
        return hourly_cost(seconds, self._price_per_hour)

    def batch_key(self, request: GenerationRequest) -> Hashable:
        """Requests with equal keys can share one pipeline call."""
        chosen = self._conditioning(request)
        return (
            request.model or self.model,
            request.width,
            request.height,
            request.steps,
            request.guidance,
            chosen.kind,
            chosen.strength,
            # SDXL encodes "" differently from no negative at all: keep the two apart.
            bool(request.negative_prompt),
            # Masks and active adapters hold for a whole call: never mix layouts or LoRAs.
            tuple(r.box for r in conditioning.masked_regions(request))
            if chosen.kind != conditioning.NONE
            else (),
            tuple(sorted((lora.name, lora.weight) for lora in request.loras)),
        )

    def generate(
        self, request: GenerationRequest, on_progress: ProgressCallback, cancel: CancelToken
    ) -> GeneratedImage:
        (result,) = self.generate_batch([request], [on_progress], [cancel])
        if isinstance(result, Exception):
            raise result
        return result

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_progress_list: Sequence[ProgressCallback],
        cancels: Sequence[CancelToken],
    ) -> list[GeneratedImage | Exception]:
        """One image (or its error) per request, in order; one pipeline call for them all.

        A request that is invalid or already cancelled gets its error and takes no part; a
        cancel during the run drops that image only, and stops the run when every image of
        it is cancelled. A failure of the run itself (out of memory) is every image's error.
        """
        self.load()
        results: list[GeneratedImage | Exception | None] = [None] * len(requests)
        keys = {self.batch_key(r) for r in requests}
        if len(keys) > 1:
            raise ValueError(f"requests of one batch must share a batch key, got {keys}")
        chosen = self._conditioning(requests[0])
        runnable: list[int] = []
        for i, request in enumerate(requests):
            try:
                self._validate(request, chosen)
            except PermanentError as exc:
                results[i] = exc
                continue
            runnable.append(i)
        with self._lock:
            live = []
            for i in runnable:
                if cancels[i].is_set():
                    results[i] = GenerationCancelled("cancelled before generation started")
                else:
                    live.append(i)
            if live:
                try:
                    made = self._run(
                        [requests[i] for i in live],
                        [on_progress_list[i] for i in live],
                        [cancels[i] for i in live],
                        chosen,
                    )
                except Exception as exc:  # the whole run failed: so did each of its images
                    made = [exc] * len(live)
                for i, outcome in zip(live, made, strict=True):
                    results[i] = outcome
        return [r if r is not None else RuntimeError("no result") for r in results]

    # --- internals --------------------------------------------------------------------

    def _conditioning(self, request: GenerationRequest) -> Conditioning:
        scale = self.options.ip_adapter_scale if self.options.ip_adapter else None
        return conditioning.choose(
            request, ip_adapter_scale=scale, reference_strength=self.options.reference_strength
        )

    def _validate(self, request: GenerationRequest, chosen: Conditioning) -> None:
        if request.model is not None and request.model != self.model:
            raise InvalidGenerationRequest(
                f"the job asks for model {request.model!r} but this generator serves {self.model!r}"
            )
        multiple = size_multiple(self._pipe)
        if request.steps < 1:
            raise InvalidGenerationRequest(f"steps must be at least 1, got {request.steps}")
        if request.width < multiple or request.height < multiple:
            raise InvalidGenerationRequest(f"size too small: {request.width}x{request.height}")
        strength = chosen.strength
        if chosen.kind == conditioning.IMG2IMG and strength is not None:
            if not 0.0 < strength <= 1.0:
                raise InvalidGenerationRequest(
                    f"img2img_strength must be in (0, 1], got {strength}"
                )
            if int(request.steps * strength) < 1:
                # diffusers would fail deep inside with a less useful message.
                raise InvalidGenerationRequest(
                    f"steps x img2img_strength must be >= 1 (got {request.steps} x {strength})"
                )
        if chosen.kind != conditioning.NONE:
            everything = [*request.reference_images]
            for region in request.regions:
                everything.extend(region.reference_images)
            for reference in everything:
                decode_image(reference)  # unreadable: this image's error only

    def _run(
        self,
        requests: list[GenerationRequest],
        on_progress_list: list[ProgressCallback],
        cancels: list[CancelToken],
        chosen: Conditioning,
    ) -> list[GeneratedImage | Exception]:
        first = requests[0]
        multiple = size_multiple(self._pipe)
        width, height = _round_up(first.width, multiple), _round_up(first.height, multiple)
        pipe, kwargs = self._pipeline_and_inputs(requests, chosen, width, height)
        active = self._lora_adapters().activate(first.loras)
        started = time.perf_counter()
        steps_run = 0

        def on_step_end(
            pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            nonlocal steps_run
            steps_run += 1
            # num_timesteps is the real count (img2img runs only strength x steps).
            total = int(getattr(pipe, "num_timesteps", first.steps))
            for report, cancel in zip(on_progress_list, cancels, strict=True):
                if not cancel.is_set():
                    report(steps_run, total)
            if all(c.is_set() for c in cancels):
                pipe._interrupt = True  # diffusers skips the remaining steps
            return tensors

        kwargs.update(
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            # One generator per image: its noise depends on its own seed, not its batch.
            generator=[torch.Generator(self.device).manual_seed(r.seed) for r in requests],
            callback_on_step_end=on_step_end,
            output_type="pil",
        )
        accepted = call_parameters(pipe)
        try:
            output = pipe(**{k: v for k, v in kwargs.items() if k in accepted})
        except torch.OutOfMemoryError as exc:
            # Another pod (or a smaller batch later) may fit: let the worker retry.
            raise RetryableError(f"out of accelerator memory: {exc}") from exc
        seconds = (time.perf_counter() - started) / len(requests)
        versions = pipeline_versions(pipe, self.dtype, self.options)
        results: list[GeneratedImage | Exception] = []
        for request, cancel, image in zip(requests, cancels, output.images, strict=True):
            if cancel.is_set():
                results.append(
                    GenerationCancelled(f"cancelled after {steps_run} of {request.steps} steps")
                )
                continue
            made = self._finished(
                request, image, chosen, versions, steps_run, seconds, len(requests)
            )
            results.append(dataclasses.replace(made, loras=dict(active)))
        return results

    def _pipeline_and_inputs(
        self, requests: list[GenerationRequest], chosen: Conditioning, width: int, height: int
    ) -> tuple[Any, dict[str, Any]]:
        kwargs: dict[str, Any] = {"prompt": [r.prompt for r in requests]}
        negatives = [r.negative_prompt for r in requests]
        if any(negatives):
            kwargs["negative_prompt"] = negatives
        pipe = self._pipe
        if chosen.kind == conditioning.IMG2IMG:
            pipe = self._image_to_image()
            kwargs.update(
                image=[conditioning.init_image(r, width, height) for r in requests],
                strength=chosen.strength,
            )
        else:
            kwargs.update(width=width, height=height)
        if self.options.ip_adapter:
            # Loaded adapters need embeddings on every call; scale 0 switches them off.
            with_refs = chosen.kind == conditioning.IP_ADAPTER
            pipe.set_ip_adapter_scale(chosen.strength if with_refs else 0.0)
            references = [conditioning.reference_sets(r) if with_refs else None for r in requests]
            regions = conditioning.masked_regions(requests[0])
            if with_refs and regions:
                # Each character's adapter images act only inside its own region.
                kwargs["cross_attention_kwargs"] = {
                    "ip_adapter_masks": conditioning.region_masks(regions, width, height)
                }
            kwargs["ip_adapter_image_embeds"] = conditioning.ip_adapter_embeds(
                pipe,
                references,
                classifier_free=conditioning.uses_classifier_free_guidance(
                    pipe, requests[0].guidance
                ),
            )
        return pipe, kwargs

    def _finished(
        self,
        request: GenerationRequest,
        image: Image.Image,
        chosen: Conditioning,
        versions: dict[str, str],
        steps_run: int,
        seconds: float,
        batch_size: int,
    ) -> GeneratedImage:
        if image.size != (request.width, request.height):
            image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
        return GeneratedImage(
            png=encode_png(image),
            width=image.width,
            height=image.height,
            backend=self.name,
            model=self.model,
            device=self.device,
            versions=versions,
            demo=False,
            steps_run=steps_run,
            seconds=seconds,
            conditioning=chosen.kind,
            conditioning_strength=chosen.strength,
            batch_size=batch_size,
        )

    def _lora_adapters(self) -> LoraAdapters:
        if self._loras is None:
            self._loras = LoraAdapters(self._pipe, self.options.lora_cache_size)
        return self._loras

    def _image_to_image(self) -> Any:
        if self._img2img is None:
            self._img2img = image_to_image(self._pipe)
        return self._img2img


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple
