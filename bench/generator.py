"""Images per second: the plain per-request diffusers loop against this service's path.

(a) baseline: what a simple server does - one `pipe(...)` call per request, then PNG.
(b) service: the generator's path - `DiffusersBackend` behind the `MicroBatcher`, with
    every request waiting together (a queue with a backlog), so images of one shape run
    `--batch` at a time; PNG encoding included, as in (a).
Both use the same pipeline object, seeds, prompts and settings, in this process.

    .venv/bin/python bench/generator.py                 # tiny random SD on CPU
    .venv/bin/python bench/generator.py --sdxl-unet     # SDXL-sized random UNet (CUDA, fp16)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

# The fixtures that build random pipelines live with the tests, at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.generator.backends import CancelToken, GenerationRequest
from services.generator.backends.base import encode_png
from services.generator.backends.diffusers_backend import DiffusersBackend
from services.generator.batching import MicroBatcher

PROMPTS = ["a portrait of Mira, auburn hair", "a lighthouse at dusk", "a red fox in snow"]


def _requests(count: int, size: int, steps: int) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            prompt=PROMPTS[i % len(PROMPTS)],
            negative_prompt="blurry, low quality",
            seed=1000 + i,
            width=size,
            height=size,
            steps=steps,
            guidance=5.0,
            identity_seed=1,
        )
        for i in range(count)
    ]


def baseline(pipe: Any, requests: list[GenerationRequest]) -> None:
    for r in requests:
        image = pipe(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            num_inference_steps=r.steps,
            guidance_scale=r.guidance,
            width=r.width,
            height=r.height,
            generator=torch.Generator(pipe.device).manual_seed(r.seed),
        ).images[0]
        encode_png(image)


def service(
    backend: DiffusersBackend, warm: list[GenerationRequest], requests: list[GenerationRequest]
) -> float:
    """Seconds for `requests` through the batcher (after one warm-up batch)."""

    async def through(batcher: MicroBatcher, batch: list[GenerationRequest]) -> None:
        calls = (batcher.generate("diffusers", backend, r, _ignore, CancelToken()) for r in batch)
        await asyncio.gather(*calls)

    async def everything() -> float:
        batcher = MicroBatcher(len(warm), max_wait_s=0.05, capacity=len(requests))
        await through(batcher, warm)
        _sync(backend.device)
        started = time.perf_counter()
        await through(batcher, requests)
        _sync(backend.device)
        return time.perf_counter() - started

    return asyncio.run(everything())


def _ignore(step: int, total: int) -> None:
    pass


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def report(label: str, images: int, seconds: float) -> None:
    print(
        f"{label:<36} {images / seconds:8.2f} images/s {seconds / images:8.3f} s/image "
        f"({images} images in {seconds:.2f} s)"
    )


def tiny_pipeline(device: str) -> Any:
    from diffusers import StableDiffusionPipeline

    from tests.fixtures.tiny_pipeline import build_tiny_sd

    folder = Path(tempfile.mkdtemp(prefix="bench-tiny-sd-")) / "tiny-sd"
    build_tiny_sd(folder)
    loader: Any = StableDiffusionPipeline
    return loader.from_pretrained(str(folder), local_files_only=True).to(device)


def sdxl_sized_pipeline(device: str) -> Any:
    """SDXL's UNet and VAE at full size with random weights; small text encoders.

    The UNet (2.6 B parameters) is what a step costs; the text encoders run once per
    image and only need SDXL's output widths (768 + 1280 = the UNet's 2048 context).
    """
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from tests.fixtures.tiny_pipeline import write_tokenizer_files

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    folder = Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    write_tokenizer_files(folder)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)

    def text_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_attention_heads=hidden // 64,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            projection_dim=1280,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )

    unet_cls: Any = UNet2DConditionModel
    vae_cls: Any = AutoencoderKL
    scheduler_cls: Any = EulerDiscreteScheduler
    pipeline_cls: Any = StableDiffusionXLPipeline
    with torch.device(device):
        unet = unet_cls(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            cross_attention_dim=2048,
        ).to(dtype)
        vae = vae_cls(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=1024,
            scaling_factor=0.13025,
        ).to(dtype)
        text_encoder: Any = CLIPTextModel(text_config(768))
        text_encoder_2: Any = CLIPTextModelWithProjection(text_config(1280))
        text_encoder, text_encoder_2 = text_encoder.to(dtype), text_encoder_2.to(dtype)
    return pipeline_cls(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler_cls(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    ).to(device)


def run_variant(args: argparse.Namespace) -> float:
    """Build the pipeline, warm up, and time one variant in this process; seconds."""
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = sdxl_sized_pipeline(args.device) if args.sdxl_unet else tiny_pipeline(args.device)
    pipe.set_progress_bar_config(disable=True)
    warm = _requests(args.batch, args.size, args.steps)
    requests = _requests(args.images, args.size, args.steps)
    if args.variant == "a":
        baseline(pipe, warm[:1])
        _sync(args.device)
        started = time.perf_counter()
        baseline(pipe, requests)
        _sync(args.device)
        return time.perf_counter() - started
    return service(DiffusersBackend.from_pipeline(pipe, "bench"), warm, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdxl-unet", action="store_true", help="SDXL-sized random UNet")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None, help="default 32 (tiny), 16 (sdxl)")
    parser.add_argument("--size", type=int, default=None, help="pixels, default 64 / 1024")
    parser.add_argument("--steps", type=int, default=None, help="default 8 / 20")
    parser.add_argument("--batch", type=int, default=4, help="IMAGEGEN_GENERATOR_BATCH_MAX_SIZE")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--variant", choices=["a", "b"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.images = args.images or (16 if args.sdxl_unet else 32)
    args.size = args.size or (1024 if args.sdxl_unet else 64)
    args.steps = args.steps or (20 if args.sdxl_unet else 8)
    if args.variant:
        print(f"{run_variant(args):.6f}")
        return
    name = "SDXL-sized UNet (random weights)" if args.sdxl_unet else "tiny random SD"
    print(
        f"{name} on {args.device}, {args.images} images {args.size}x{args.size}, "
        f"{args.steps} steps, batch {args.batch}, torch {torch.__version__}"
    )
    # Each variant in a fresh process: CPU torch keeps per-thread OpenMP state, and a
    # variant that ran first on another thread would slow the second one down.
    seconds = {}
    for variant in ("a", "b"):
        done = subprocess.run(
            [sys.executable, __file__, "--variant", variant, *sys.argv[1:]],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds[variant] = float(done.stdout.strip().splitlines()[-1])
    report("(a) per-request pipe() loop", args.images, seconds["a"])
    report("(b) service path (batched backend)", args.images, seconds["b"])
    print(f"speed-up: {seconds['a'] / seconds['b']:.2f}x")


if __name__ == "__main__":
    main()
