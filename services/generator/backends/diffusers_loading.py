"""Loading a diffusers pipeline for serving: offline, on its device, optionally tuned.

Only disk and the local Hugging Face cache are read (`local_files_only`); weights get onto
a pod ahead of time (`imagegen models download`, a baked image or a mounted volume).
"""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from imagegen.errors import ConfigurationError
from services.generator.backends.base import ModelNotFoundError
from services.generator.settings import DiffusersSettings

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """Half precision on GPUs (bf16 where supported: no fp16 VAE overflow); fp32 on CPU."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_pipeline(model: str, device: str, dtype: torch.dtype, options: DiffusersSettings) -> Any:
    """The text-to-image pipeline of `model`, on `device`, with the configured options."""
    # Imported here, not at module level: diffusers costs seconds to import.
    from diffusers import AutoPipelineForText2Image

    auto: Any = AutoPipelineForText2Image  # diffusers' own annotations are partial
    try:
        # `dtype` is diffusers 0.42's name for the deprecated `torch_dtype`.
        pipe = auto.from_pretrained(model, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        # A missing directory, an id absent from the cache and HF_HUB_OFFLINE misses
        # all surface as OSError/EnvironmentError (ValueError for an unknown layout).
        raise ModelNotFoundError(model, first_line(exc)) from exc
    if options.ip_adapter:
        _load_ip_adapter(pipe, options)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    net = denoiser(pipe)
    # Attention stays at diffusers' default, PyTorch SDPA (flash / memory-efficient kernels
    # on GPU); forcing a processor would break UNets that need another one (IP-Adapter).
    if options.channels_last:
        # Convolutions on GPUs run faster NHWC; transformers (FLUX) have few to gain.
        for module in (net, getattr(pipe, "vae", None)):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if options.compile:
        # In place (nn.Module.compile): `pipe.unet.config` and friends stay reachable.
        net.compile(mode=options.compile_mode)
    if "negative_prompt" not in call_parameters(pipe):
        log.info("event=negative_prompt_unsupported pipeline=%s", type(pipe).__name__)
    return pipe


def _load_ip_adapter(pipe: Any, options: DiffusersSettings) -> None:
    if not hasattr(pipe, "load_ip_adapter") or getattr(pipe, "unet", None) is None:
        raise ConfigurationError(
            f"IMAGEGEN_GENERATOR_IP_ADAPTER is set but {type(pipe).__name__} has no UNet "
            "IP-Adapter support; unset it to condition on references with img2img"
        )
    adapter = options.ip_adapter
    try:
        pipe.load_ip_adapter(
            adapter,
            subfolder=options.ip_adapter_subfolder,
            weight_name=options.ip_adapter_weight_name,
            image_encoder_folder=options.ip_adapter_image_encoder,
            local_files_only=True,
        )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"{adapter}/{options.ip_adapter_subfolder}/{options.ip_adapter_weight_name}",
            f"IP-Adapter: {first_line(exc)}",
        ) from exc


def image_to_image(pipe: Any) -> Any:
    """The img2img twin of `pipe`; it shares every weight (and the IP-Adapter) with it."""
    from diffusers import AutoPipelineForImage2Image

    auto: Any = AutoPipelineForImage2Image
    twin = auto.from_pipe(pipe)
    twin.set_progress_bar_config(disable=True)
    return twin


def denoiser(pipe: Any) -> Any:
    """The UNet (SD, SDXL) or transformer (FLUX, SD3) that runs every step."""
    net = getattr(pipe, "unet", None)
    return net if net is not None else pipe.transformer


def call_parameters(pipe: Any) -> frozenset[str]:
    """What this pipeline's `__call__` accepts (FLUX schnell and others take no negatives)."""
    return frozenset(inspect.signature(pipe.__call__).parameters)


def size_multiple(pipe: Any) -> int:
    """Sizes the pipeline accepts are multiples of this: the VAE's scale, x2 for patchified DiTs."""
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    return scale if getattr(pipe, "unet", None) is not None else scale * 2


def pipeline_versions(pipe: Any, dtype: torch.dtype, options: DiffusersSettings) -> dict[str, str]:
    """Everything about the software that shaped the pixels, for the reproduction record."""
    versions = {name: package_version(name) for name in ("torch", "diffusers", "transformers")}
    net = denoiser(pipe)
    processors = getattr(net, "attn_processors", {})
    versions.update(
        pipeline=type(pipe).__name__,
        dtype=str(dtype).removeprefix("torch."),
        scheduler=type(pipe.scheduler).__name__,
        attention=",".join(sorted({type(p).__name__ for p in processors.values()})) or "default",
        compile=options.compile_mode if options.compile else "off",
        channels_last=str(options.channels_last).lower(),
    )
    if options.ip_adapter:
        versions["ip_adapter"] = f"{options.ip_adapter}/{options.ip_adapter_weight_name}"
    return versions


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
