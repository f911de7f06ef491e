"""Model backends for the generator: the `ImageBackend` port and a factory for each kind.

Implementations are imported inside `build_backend` (hence the PLC0415 waivers) so that
importing the port costs neither torch nor diffusers.
"""

from __future__ import annotations

from typing import Literal

from imagegen.errors import ConfigurationError
from services.generator.backends.base import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ImageBackend,
    InvalidGenerationRequest,
    ModelNotFoundError,
    ProgressCallback,
)

BackendKind = Literal["demo", "diffusers"]
BACKEND_KINDS: tuple[BackendKind, ...] = ("demo", "diffusers")
# An on-demand single-GPU hour, roughly what an A100/H100 pod costs; override per deployment.
DEFAULT_GPU_PRICE_PER_HOUR = 2.50

__all__ = [
    "BACKEND_KINDS",
    "DEFAULT_GPU_PRICE_PER_HOUR",
    "BackendKind",
    "CancelToken",
    "GeneratedImage",
    "GenerationCancelled",
    "GenerationRequest",
    "ImageBackend",
    "InvalidGenerationRequest",
    "ModelNotFoundError",
    "ProgressCallback",
    "build_backend",
]


def build_backend(
    kind: str,
    model: str | None,
    *,
    device: str | None = None,
    gpu_price_per_hour: float = DEFAULT_GPU_PRICE_PER_HOUR,
) -> ImageBackend:
    """A backend of `kind`, not yet loaded (call `load()` in the worker's start-up)."""
    if kind == "demo":
        from services.generator.backends.demo_faces import DemoFaceBackend

        # Priced like any backend (busy seconds x rate): a few ms per face, so ~$0.00001.
        return DemoFaceBackend(price_per_hour=gpu_price_per_hour, device=device)
    if kind == "diffusers":
        if not model:
            raise ConfigurationError("the diffusers backend needs a model (a path or hub id)")
        from services.generator.backends.diffusers_backend import (
            DiffusersBackend,
        )

        return DiffusersBackend(model, device=device, price_per_hour=gpu_price_per_hour)
    raise ConfigurationError(f"unknown backend kind {kind!r}; expected one of {BACKEND_KINDS}")
