"""Generator backends on real code paths: a tiny random SD pipeline and the real DCGAN."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub read it

import numpy as np
import pytest
from PIL import Image

from imagegen.errors import PermanentError
from schemas.characters import CharacterAttributes, CharacterSpec
from services.generator.backends import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ImageBackend,
    InvalidGenerationRequest,
    ModelNotFoundError,
    build_backend,
)
from services.generator.backends.diffusers_backend import DiffusersBackend
from services.generator.backends.diffusers_loading import pipeline_versions
from services.generator.prompts import (
    PACK_POSES,
    STYLES,
    UnknownStyleError,
    build_prompt,
    identity_block,
)
from services.generator.settings import DiffusersSettings


def _request(**overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "prompt": "a portrait of Mira, auburn hair",
        "negative_prompt": "blurry",
        "seed": 7,
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance": 5.0,
        "identity_seed": 1234,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def _run(backend: ImageBackend, request: GenerationRequest) -> tuple[GeneratedImage, list[int]]:
    steps: list[int] = []
    image = backend.generate(request, lambda step, total: steps.append(step), CancelToken())
    return image, steps


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def _mse(a: bytes, b: bytes) -> float:
    return float(np.mean((_pixels(a) - _pixels(b)) ** 2))


# --- diffusers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd(tiny_sd_path: Path) -> ImageBackend:
    backend = build_backend("diffusers", str(tiny_sd_path), device="cpu")
    backend.load()
    return backend


def test_same_request_gives_identical_png(sd: ImageBackend) -> None:
    first, _ = _run(sd, _request())
    second, _ = _run(sd, _request())
    assert first.png == second.png
    assert (first.width, first.height, first.demo, first.backend) == (64, 64, False, "diffusers")
    assert first.png.startswith(b"\x89PNG")
    assert first.versions["diffusers"] and first.steps_run == 4


def test_different_seeds_differ(sd: ImageBackend) -> None:
    a, _ = _run(sd, _request(seed=1))
    b, _ = _run(sd, _request(seed=2))
    assert a.png != b.png


def test_progress_called_once_per_step(sd: ImageBackend) -> None:
    calls: list[tuple[int, int]] = []
    sd.generate(_request(steps=5), lambda s, t: calls.append((s, t)), CancelToken())
    assert calls == [(s, 5) for s in range(1, 6)]


def test_cancel_stops_within_one_step(sd: ImageBackend) -> None:
    cancel = CancelToken()
    calls: list[int] = []

    def on_progress(step: int, total: int) -> None:
        calls.append(step)
        if step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        sd.generate(_request(steps=10), on_progress, cancel)
    assert len(calls) <= 3


def test_cancelled_before_start_runs_nothing(sd: ImageBackend) -> None:
    cancel = CancelToken()
    cancel.set()
    calls: list[int] = []
    with pytest.raises(GenerationCancelled):
        sd.generate(_request(), lambda s, t: calls.append(s), cancel)
    assert calls == []


def test_img2img_runs_and_strength_matters(sd: ImageBackend) -> None:
    reference, _ = _run(sd, _request(seed=3))
    refs = (reference.png,)
    weak, weak_steps = _run(sd, _request(steps=10, reference_images=refs, img2img_strength=0.3))
    strong, _ = _run(sd, _request(steps=10, reference_images=refs, img2img_strength=0.9))
    # A random VAE does not reconstruct its input, so closeness to the reference says
    # nothing here; how many steps ran and that the outputs differ do.
    assert weak.png != strong.png
    assert weak.versions["pipeline"].endswith("Img2ImgPipeline")
    assert weak_steps == [1, 2, 3]  # img2img denoises only strength x steps
    assert (weak.steps_run, strong.steps_run) == (3, 9)


def test_odd_size_is_honoured(sd: ImageBackend) -> None:
    image, _ = _run(sd, _request(width=100, height=72))
    assert Image.open(io.BytesIO(image.png)).size == (100, 72)


def test_missing_model_is_named(tmp_path: Path) -> None:
    for model in (str(tmp_path / "nope"), "nobody/no-such-model"):
        backend = build_backend("diffusers", model, device="cpu")
        with pytest.raises(ModelNotFoundError, match="no"):
            backend.load()
        with pytest.raises(ModelNotFoundError) as info:
            backend.generate(_request(), lambda s, t: None, CancelToken())
        assert model in str(info.value)


def test_record_names_the_software_that_made_the_pixels(sd: ImageBackend) -> None:
    image, _ = _run(sd, _request())
    versions = image.versions
    assert versions["pipeline"] == "StableDiffusionPipeline"
    assert versions["scheduler"] == "DDIMScheduler" and versions["dtype"] == "float32"
    # AttnProcessor2_0 is diffusers' PyTorch-SDPA attention, kept as the default.
    assert versions["attention"] == "AttnProcessor2_0"
    assert versions["torch"].startswith("2.") and versions["transformers"]
    assert (versions["compile"], versions["channels_last"]) == ("off", "false")
    assert (image.conditioning, image.conditioning_strength, image.batch_size) == ("", None, 1)


def test_a_job_for_another_model_is_refused_naming_both(sd: ImageBackend) -> None:
    assert isinstance(sd, DiffusersBackend)
    with pytest.raises(InvalidGenerationRequest) as info:
        _run(sd, _request(model="stabilityai/sdxl-turbo"))
    assert isinstance(info.value, PermanentError)
    assert "stabilityai/sdxl-turbo" in str(info.value) and sd.model in str(info.value)
    same, _ = _run(sd, _request(model=sd.model))  # naming the served model is fine
    assert same.png == _run(sd, _request())[0].png


def test_references_without_ip_adapter_use_img2img_at_the_configured_strength(
    tiny_sd_path: Path,
) -> None:
    backend = DiffusersBackend(
        str(tiny_sd_path), device="cpu", options=DiffusersSettings(reference_strength=0.5)
    )
    plain, _ = _run(backend, _request(steps=8))
    conditioned, steps = _run(backend, _request(steps=8, reference_images=(plain.png,)))
    assert (conditioned.conditioning, conditioned.conditioning_strength) == ("img2img", 0.5)
    assert steps == [1, 2, 3, 4]  # strength 0.5 of 8 steps
    assert conditioned.png != plain.png
    # Strength 0 turns reference conditioning off: the references change nothing.
    off = DiffusersBackend(
        str(tiny_sd_path), device="cpu", options=DiffusersSettings(reference_strength=0)
    )
    ignored, _ = _run(off, _request(steps=8, reference_images=(plain.png,)))
    assert (ignored.conditioning, ignored.png) == ("", plain.png)


def test_unreadable_reference_is_a_permanent_error(sd: ImageBackend) -> None:
    with pytest.raises(InvalidGenerationRequest, match="reference"):
        _run(sd, _request(reference_images=(b"not an image",), img2img_strength=0.5))


def test_pipeline_without_negative_prompt_gets_none(sd: ImageBackend, tiny_sd_path: Path) -> None:
    class NoNegatives:
        """A FLUX-schnell-like call signature: no negative_prompt parameter."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __call__(
            self,
            prompt: Any,
            width: int,
            height: int,
            num_inference_steps: int,
            guidance_scale: float,
            generator: Any,
            callback_on_step_end: Any,
            output_type: str,
        ) -> Any:
            return self.inner(
                prompt=prompt,
                width=width,
                height=height,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                callback_on_step_end=callback_on_step_end,
                output_type=output_type,
            )

    backend = DiffusersBackend(str(tiny_sd_path), device="cpu")
    backend.load()
    backend._pipe = NoNegatives(backend._pipe)
    image, steps = _run(backend, _request(negative_prompt="blurry"))
    assert steps == [1, 2, 3, 4]
    assert image.png == _run(sd, _request(negative_prompt=""))[0].png


def test_channels_last_and_compile_are_applied_when_set(tiny_sd_path: Path) -> None:
    import torch

    options = DiffusersSettings(channels_last=True, compile=True, compile_mode="default")
    backend = DiffusersBackend(str(tiny_sd_path), device="cpu", options=options)
    backend.load()
    unet = backend._pipe.unet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert unet._compiled_call_impl is not None  # compiled in place, on first call
    versions = pipeline_versions(backend._pipe, backend.dtype, backend.options)
    assert (versions["compile"], versions["channels_last"]) == ("default", "true")


def test_sdxl_pipeline_generates_deterministically(tiny_sdxl_path: Path) -> None:
    backend = build_backend("diffusers", str(tiny_sdxl_path), device="cpu")
    first, steps = _run(backend, _request(width=64, height=64))
    second, _ = _run(backend, _request(width=64, height=64))
    other, _ = _run(backend, _request(width=64, height=64, seed=8))
    assert first.png == second.png != other.png
    assert steps == [1, 2, 3, 4]
    assert first.versions["pipeline"] == "StableDiffusionXLPipeline"
    refs = (first.png,)
    img2img, _ = _run(backend, _request(steps=4, reference_images=refs, img2img_strength=0.5))
    assert img2img.versions["pipeline"] == "StableDiffusionXLImg2ImgPipeline"
    assert img2img.steps_run == 2


# --- demo faces -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> ImageBackend:
    backend = build_backend("demo", None)
    backend.load()
    return backend


def test_demo_is_deterministic_and_sized(demo: ImageBackend) -> None:
    first, steps = _run(demo, _request(width=256, height=384))
    second, _ = _run(demo, _request(width=256, height=384))
    assert first.png == second.png
    assert steps == [1]
    assert first.demo and first.model == "dcgan-digiface-demo"
    assert Image.open(io.BytesIO(first.png)).size == (256, 384) == (first.width, first.height)


def test_demo_makes_faces_not_noise(demo: ImageBackend) -> None:
    image, _ = _run(demo, _request(width=64, height=64))
    pixels = _pixels(image.png)
    # A face has smooth regions: neighbouring pixels are far closer than in random noise.
    neighbour = float(np.mean(np.abs(np.diff(pixels, axis=1))))
    assert neighbour < 20 and pixels.std() > 20


def test_demo_keeps_identity_across_images(demo: ImageBackend) -> None:
    # Even seeds only: odd seeds mirror the face, which is the same person but new pixels.
    def face(identity: int, seed: int) -> bytes:
        return _run(demo, _request(identity_seed=identity, seed=seed))[0].png

    # Pixel MSE is a crude identity measure (a turned head moves many pixels), so compare
    # averages over several characters rather than single pairs.
    identities = range(1, 9)
    within = [_mse(face(i, 10), face(i, 12)) for i in identities]
    across = [_mse(face(i, 10), face(i + 1, 10)) for i in identities]
    assert all(w > 0 for w in within)  # images of one character do vary
    assert np.mean(within) * 3 < np.mean(across)


def test_unknown_backend_kind_refused() -> None:
    with pytest.raises(PermanentError, match="kind"):
        build_backend("gpt-image", None)


# --- prompts --------------------------------------------------------------------------

MIRA = CharacterSpec(
    id="c1",
    name="Mira",
    description="a kind baker from a seaside town",
    attributes=CharacterAttributes(
        gender="woman", hair_colour="auburn", eye_colour="green", distinctive_features=["freckles"]
    ),
    style_modifiers=["soft lighting"],
    seed=42,
)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_identity_block_in_every_style(style: str) -> None:
    prompt, negative = build_prompt(MIRA, style, PACK_POSES[0])
    block = identity_block(MIRA)
    assert block in prompt and PACK_POSES[0] in prompt
    for part in ("Mira", "auburn hair", "green eyes", "freckles", "seaside", "soft lighting"):
        assert part in block
    assert negative


def test_unknown_style_refused_by_name() -> None:
    with pytest.raises(UnknownStyleError, match="vaporwave") as info:
        build_prompt(MIRA, "vaporwave", "")
    assert isinstance(info.value, PermanentError)


def test_pack_poses_are_many_and_distinct() -> None:
    assert len(PACK_POSES) >= 23 and len(set(PACK_POSES)) == len(PACK_POSES)


def test_scene_prompt_has_the_scene_and_every_character() -> None:
    from schemas.jobs import GenerateImage, ImageIdentity
    from schemas.topics import Tier
    from services.generator.prompts import prompt_for_job

    tom = MIRA.model_copy(update={"id": "tom", "name": "Tom", "description": "a tall baker"})
    job = GenerateImage(
        image=ImageIdentity(
            job_id="j",
            image_id="i",
            image_index=0,
            image_count=1,
            user_id="u",
            character_id=MIRA.id,
        ),
        tier=Tier.REALTIME,
        character=MIRA,
        characters=[tom],
        prompt="",
        scene_description="two friends sharing bread on a pier",
        extra_prompt="golden hour",
        negative_prompt="rain",
        seed=1,
        style="watercolor",
        width=512,
        height=512,
    )
    prompt, negative = prompt_for_job(job)
    assert "two friends sharing bread on a pier" in prompt and "golden hour" in prompt
    assert identity_block(MIRA) in prompt and identity_block(tom) in prompt
    assert negative.endswith("rain")
    portrait = job.model_copy(update={"characters": [], "scene_description": "", "pose": "waving"})
    prompt, _ = prompt_for_job(portrait)
    assert "waving" in prompt and "golden hour" in prompt and "Tom" not in prompt
