"""Model backends for the generator: the `ImageBackend` port and a factory for each kind.

Implementations are imported inside `build_backend` (hence the PLC0415 waivers) so that
importing the port costs neither torch nor diffusers.
"""

from __future__ import annotations

import importlib
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

BackendKind = Literal[
    "demo", "diffusers", "openai", "replicate", "fal", "runpod", "instant", "flaky"
]
BACKEND_KINDS: tuple[BackendKind, ...] = (
    "demo",
    "diffusers",
    "openai",
    "replicate",
    "fal",
    "runpod",
    "instant",
    "flaky",
)
# Hosted providers: each module has `build() -> ImageBackend`, reading its own
# `IMAGEGEN_<KIND>_*` settings (endpoint, key, default model, prices), so adding one
# touches no other. `model` (IMAGEGEN_GENERATOR_MODEL) is the self-hosted model only.
_HOSTED: dict[str, str] = {
    "openai": "services.generator.backends.openai_backend",
    "replicate": "services.generator.backends.replicate_backend",
    "fal": "services.generator.backends.fal_backend",
    "runpod": "services.generator.backends.runpod_backend",
}
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
    if kind == "instant":  # no compute: for measuring the engine itself (bench/)
        from services.generator.backends.instant import InstantBackend

        return InstantBackend(model)
    if kind == "flaky":  # testing aid: the demo backend failing a share of calls (fault tests)
        from services.generator.backends.flaky import build_flaky

        return build_flaky(price_per_hour=gpu_price_per_hour, device=device)
    if kind in _HOSTED:
        module = importlib.import_module(_HOSTED[kind])
        backend: ImageBackend = module.build()
        return backend
    raise ConfigurationError(f"unknown backend kind {kind!r}; expected one of {BACKEND_KINDS}")
