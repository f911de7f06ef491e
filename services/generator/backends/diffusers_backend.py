"""The real backend: a local diffusers pipeline (SD 1.x/2.x, SDXL, anything AutoPipeline knows).

Models are loaded only from disk or the local Hugging Face cache (`local_files_only`);
pods get their weights baked in or mounted, never fetched at request time.
"""

from __future__ import annotations

import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from PIL import Image

from imagegen.errors import RetryableError
from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    InvalidGenerationRequest,
    ModelNotFoundError,
    ProgressCallback,
    decode_image,
    encode_png,
    hourly_cost,
)

# SD-family VAEs downsample by 8: sizes are rounded up to it, then resized back exactly.
_SIZE_MULTIPLE = 8


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """Half precision on GPUs (bf16 where supported: no fp16 VAE overflow); fp32 on CPU."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class DiffusersBackend:
    """One pipeline per process, loaded once, serialised: a pipeline is not re-entrant."""

    name = "diffusers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        price_per_hour: float = 0.0,
    ) -> None:
        self.model = model
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self._price_per_hour = price_per_hour
        self._pipe: Any = None
        self._img2img: Any = None
        self._lock = threading.Lock()

    # --- loading ----------------------------------------------------------------------

    def load(self) -> None:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._load_pipeline()

    def _load_pipeline(self) -> Any:
        # Imported here, not at module level: diffusers costs seconds to import.
        from diffusers import AutoPipelineForText2Image

        auto: Any = AutoPipelineForText2Image  # diffusers' own annotations are partial
        try:
            # `dtype` is diffusers 0.42's name for the deprecated `torch_dtype`.
            pipe = auto.from_pretrained(self.model, local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError) as exc:
            # A missing directory, an id absent from the cache and HF_HUB_OFFLINE misses
            # all surface as OSError/EnvironmentError (ValueError for an unknown layout).
            raise ModelNotFoundError(self.model, _first_line(exc)) from exc
        # Attention is left at diffusers' default, PyTorch SDPA (flash / memory-efficient
        # kernels on GPU); forcing a processor would break UNets that need another one.
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _image_to_image(self) -> Any:
        """The img2img twin shares every weight with the text-to-image pipeline."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self._pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    # --- generation -------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback,
        cancel: CancelToken,
    ) -> GeneratedImage:
        self.load()
        _validate(request)
        init_image = _init_image(request)
        width, height = _round_up(request.width), _round_up(request.height)
        with self._lock:
            if cancel.is_set():
                raise GenerationCancelled("cancelled before generation started")
            started = time.perf_counter()
            steps_run = 0

            def on_step_end(
                pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]
            ) -> dict[str, Any]:
                nonlocal steps_run
                steps_run += 1
                # num_timesteps is the real count (img2img runs only strength x steps).
                on_progress(steps_run, int(getattr(pipe, "num_timesteps", request.steps)))
                if cancel.is_set():
                    # diffusers skips the remaining steps when _interrupt is set.
                    pipe._interrupt = True
                return kwargs

            kwargs: dict[str, Any] = {
                "prompt": request.prompt,
                "negative_prompt": request.negative_prompt or None,
                "num_inference_steps": request.steps,
                "guidance_scale": request.guidance,
                "generator": torch.Generator(self.device).manual_seed(request.seed),
                "callback_on_step_end": on_step_end,
                "output_type": "pil",
            }
            if init_image is None:
                pipe = self._pipe
                kwargs.update(width=width, height=height)
            else:
                pipe = self._image_to_image()
                kwargs.update(
                    image=init_image.resize((width, height), Image.Resampling.LANCZOS),
                    strength=request.img2img_strength,
                )
            try:
                result = pipe(**kwargs)
            except torch.OutOfMemoryError as exc:
                # Another pod (or a smaller batch later) may fit: let the worker retry.
                raise RetryableError(f"out of accelerator memory: {exc}") from exc
            seconds = time.perf_counter() - started
        if cancel.is_set():
            raise GenerationCancelled(f"cancelled after {steps_run} of {request.steps} steps")
        image: Image.Image = result.images[0]
        if image.size != (request.width, request.height):
            image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
        return GeneratedImage(
            png=encode_png(image),
            width=image.width,
            height=image.height,
            backend=self.name,
            model=self.model,
            device=self.device,
            versions=self._versions(pipe),
            demo=False,
            steps_run=steps_run,
            seconds=seconds,
        )

    def cost_usd(self, seconds: float) -> float:
        return hourly_cost(seconds, self._price_per_hour)

    def _versions(self, pipe: Any) -> dict[str, str]:
        versions = {name: _package_version(name) for name in ("torch", "diffusers", "transformers")}
        versions["pipeline"] = type(pipe).__name__
        versions["dtype"] = str(self.dtype).removeprefix("torch.")
        return versions


def _validate(request: GenerationRequest) -> None:
    if request.steps < 1:
        raise InvalidGenerationRequest(f"steps must be at least 1, got {request.steps}")
    if request.width < _SIZE_MULTIPLE or request.height < _SIZE_MULTIPLE:
        raise InvalidGenerationRequest(f"size too small: {request.width}x{request.height}")
    strength = request.img2img_strength
    if strength is not None and not 0.0 < strength <= 1.0:
        raise InvalidGenerationRequest(f"img2img_strength must be in (0, 1], got {strength}")
    if strength is not None and request.reference_images and int(request.steps * strength) < 1:
        # diffusers would fail deep inside with a less useful message.
        raise InvalidGenerationRequest(
            f"steps x img2img_strength must be >= 1 (got {request.steps} x {strength})"
        )


def _init_image(request: GenerationRequest) -> Image.Image | None:
    """The first reference image, when img2img was asked for; otherwise text-to-image."""
    if request.img2img_strength is None or not request.reference_images:
        return None
    return decode_image(request.reference_images[0])


def _round_up(size: int) -> int:
    return -(-size // _SIZE_MULTIPLE) * _SIZE_MULTIPLE


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
