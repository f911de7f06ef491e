"""Multi-character images: each character's references steer only its own region.

The adapter's attention processors are swapped for recording ones (same maths, they only
keep what they were given), so the test sees what reaches the attention: one adapter image
set per character, in cast order, each with a mask that is 1 inside its region only.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub read it

import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from PIL import Image

from services.generator.backends import CancelToken, GeneratedImage, GenerationRequest
from services.generator.backends import diffusers_conditioning as conditioning
from services.generator.backends.base import Region
from services.generator.backends.diffusers_backend import DiffusersBackend
from services.generator.settings import DiffusersSettings
from tests.fixtures.tiny_pipeline import IP_ADAPTER_SUBFOLDER, IP_ADAPTER_WEIGHTS

WIDTH, HEIGHT = 128, 64  # a wide page: two characters side by side
LEFT, RIGHT = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)


class RecordingProcessor(IPAdapterAttnProcessor2_0):
    """diffusers' IP-Adapter attention, keeping each call's adapter tokens and masks."""

    calls: list[dict[str, Any]]

    def __call__(  # the parameters diffusers' Attention hands a processor by name
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Any = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: Any = None,
    ) -> Any:
        queries = (
            hidden_states.shape[-2] * hidden_states.shape[-1]
            if hidden_states.ndim == 4
            else hidden_states.shape[1]
        )
        self.calls.append(
            {
                "queries": queries,
                "ip_states": [s.detach().clone() for s in encoder_hidden_states[1]],
                "masks": ip_adapter_masks,
            }
        )
        return super().__call__(
            attn,
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            temb,
            scale,
            ip_adapter_masks,
        )


def _record(backend: DiffusersBackend) -> list[dict[str, Any]]:
    """Swap every IP-Adapter processor for a recording copy; returns the shared call log."""
    unet = backend._pipe.unet
    calls: list[dict[str, Any]] = []
    processors: dict[str, Any] = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            recording: Any = processor
            recording.__class__ = RecordingProcessor  # same weights, same maths
            recording.calls = calls
        processors[name] = processor
    unet.set_attn_processor(processors)
    return calls


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


MIRA = (_png((220, 40, 40)), _png((200, 60, 50)))
TOM = (_png((30, 60, 210)),)


def _request(**overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "prompt": "Mira and Tom in a garden",
        "negative_prompt": "blurry",
        "seed": 5,
        "width": WIDTH,
        "height": HEIGHT,
        "steps": 2,
        "guidance": 5.0,
        "identity_seed": 1,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def _scene(mira: tuple[bytes, ...] = MIRA, tom: tuple[bytes, ...] = TOM) -> GenerationRequest:
    return _request(
        reference_images=(*mira, *tom),
        regions=(
            Region("mira", "Mira", LEFT, mira),
            Region("tom", "Tom", RIGHT, tom),
        ),
    )


@pytest.fixture(scope="module")
def backend(tiny_sd_path: Path, tiny_ip_adapter_path: Path) -> DiffusersBackend:
    options = DiffusersSettings(
        ip_adapter=str(tiny_ip_adapter_path),
        ip_adapter_subfolder=IP_ADAPTER_SUBFOLDER,
        ip_adapter_weight_name=IP_ADAPTER_WEIGHTS,
        ip_adapter_scale=0.8,
    )
    made = DiffusersBackend(str(tiny_sd_path), device="cpu", options=options)
    made.load()
    return made


def _make(backend: DiffusersBackend, request: GenerationRequest) -> GeneratedImage:
    return backend.generate(request, lambda step, total: None, CancelToken())


def _inside(mask: torch.Tensor, queries: int, box: tuple[float, ...]) -> tuple[float, float]:
    """(mean inside box, max outside box) of one region's mask as the attention applies it."""
    flat = IPAdapterMaskProcessor.downsample(mask, 1, queries, 1)[0, :, 0]
    rows = round((queries * HEIGHT / WIDTH) ** 0.5)
    grid = flat.reshape(rows, queries // rows)
    columns = grid.shape[1]
    x0, x1 = round(box[0] * columns), round(box[2] * columns)
    inside = grid[:, x0:x1]
    outside = torch.cat([grid[:, :x0], grid[:, x1:]], dim=1)
    return float(inside.mean()), float(outside.abs().max()) if outside.numel() else 0.0


def test_each_characters_adapter_images_reach_only_its_region(backend: DiffusersBackend) -> None:
    calls = _record(backend)
    # What each character's adapter tokens are when it is conditioned alone.
    _make(backend, _request(reference_images=MIRA))
    mira_alone = calls[-1]["ip_states"][0]
    _make(backend, _request(reference_images=TOM))
    tom_alone = calls[-1]["ip_states"][0]
    calls.clear()

    made = _make(backend, _scene())

    assert made.conditioning == "ip_adapter"
    assert calls, "the adapter's attention never ran"
    for call in calls:
        (states,) = call["ip_states"]
        # (2 x batch for guidance, one image set per character, tokens, dim); set 0 is
        # Mira's (the mean of her two photos), set 1 Tom's: each its own, not a blend.
        assert states.shape[1] == 2
        torch.testing.assert_close(states[:, 0], mira_alone[:, 0])
        torch.testing.assert_close(states[:, 1], tom_alone[:, 0])
        (masks,) = call["masks"]
        assert tuple(masks.shape) == (1, 2, HEIGHT, WIDTH)
        mira_in, mira_out = _inside(masks[:, 0], call["queries"], LEFT)
        tom_in, tom_out = _inside(masks[:, 1], call["queries"], RIGHT)
        # Each set's attention output is multiplied by its mask: full inside, none outside.
        assert mira_in > 0.9 and tom_in > 0.9
        assert mira_out < 1e-6 and tom_out < 1e-6


def test_a_character_without_references_gets_no_adapter_image(
    backend: DiffusersBackend,
) -> None:
    calls = _record(backend)
    made = _make(backend, _scene(tom=()))
    assert made.conditioning == "ip_adapter"
    for call in calls:
        (states,) = call["ip_states"]
        assert states.shape[1] == 1  # Mira's set only: Tom is drawn from his prompt alone
        (masks,) = call["masks"]
        assert tuple(masks.shape) == (1, 1, HEIGHT, WIDTH)
        inside, outside = _inside(masks[:, 0], call["queries"], LEFT)
        assert inside > 0.9 and outside < 1e-6


def test_the_masks_change_the_picture_and_scenes_batch_only_with_equal_layouts(
    backend: DiffusersBackend,
) -> None:
    scene = _make(backend, _scene())
    # The same references unmasked (one averaged embedding for the whole image) differ.
    blended = _make(backend, _request(reference_images=(*MIRA, *TOM)))
    assert scene.png != blended.png
    swapped = _request(
        reference_images=(*MIRA, *TOM),
        regions=(Region("mira", "Mira", RIGHT, MIRA), Region("tom", "Tom", LEFT, TOM)),
    )
    assert _make(backend, swapped).png != scene.png
    assert backend.batch_key(_scene()) == backend.batch_key(_scene(mira=(MIRA[0],)))
    assert backend.batch_key(_scene()) != backend.batch_key(swapped)
    assert backend.batch_key(_scene()) != backend.batch_key(_scene(tom=()))


def test_img2img_starts_from_each_characters_own_reference() -> None:
    canvas = conditioning.init_image(_scene(tom=()), WIDTH, HEIGHT)
    assert canvas.getpixel((10, 32)) == (220, 40, 40)  # Mira's first photo, left
    assert canvas.getpixel((WIDTH - 10, 32)) == (128, 128, 128)  # Tom has none: neutral
    both = conditioning.init_image(_scene(), WIDTH, HEIGHT)
    assert both.getpixel((WIDTH - 10, 32)) == (30, 60, 210)
