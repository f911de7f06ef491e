"""How reference images steer a diffusers run: IP-Adapter, else img2img, else not at all.

Every image of a batch shares one conditioning kind (it is part of the batch key); the
per-image inputs (init images, IP-Adapter embeddings) are built one image at a time so
that an image comes out the same whether it ran alone or in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from services.generator.backends.base import GenerationRequest, decode_image

NONE = ""
IP_ADAPTER = "ip_adapter"
IMG2IMG = "img2img"


@dataclass(frozen=True)
class Conditioning:
    kind: str
    """"", "ip_adapter" or "img2img"."""
    strength: float | None
    """The IP-Adapter scale or the img2img strength; None when unconditioned."""


def choose(
    request: GenerationRequest, *, ip_adapter_scale: float | None, reference_strength: float
) -> Conditioning:
    """The conditioning of one request; `ip_adapter_scale` is None without an adapter."""
    if not request.reference_images:
        return Conditioning(NONE, None)
    if request.img2img_strength is not None:  # asked for explicitly: honour it
        return Conditioning(IMG2IMG, request.img2img_strength)
    if ip_adapter_scale is not None:
        return Conditioning(IP_ADAPTER, ip_adapter_scale)
    if reference_strength > 0:
        return Conditioning(IMG2IMG, reference_strength)
    return Conditioning(NONE, None)


def init_image(request: GenerationRequest, width: int, height: int) -> Image.Image:
    """The first reference at the generation size: where img2img starts from."""
    reference = decode_image(request.reference_images[0])
    return reference.resize((width, height), Image.Resampling.LANCZOS)


def ip_adapter_embeds(
    pipe: Any,
    references: list[list[Image.Image] | None],
    *,
    classifier_free: bool,
) -> list[torch.Tensor]:
    """`ip_adapter_image_embeds` for a batch: one embedding per image, in batch order.

    An image with references gets the mean of its references' embeddings (several photos
    of one face average to a steadier identity); one without gets the encoder's "no image"
    embedding, which the pipeline needs whenever an adapter is loaded (its scale is then 0).
    """
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    from diffusers.models.embeddings import ImageProjection

    hidden_states = not isinstance(projection, ImageProjection)
    device = pipe._execution_device
    positives: list[torch.Tensor] = []
    negatives: list[torch.Tensor] = []
    for images in references:
        if images:
            encoded = [pipe.encode_image(image, device, 1, hidden_states) for image in images]
            positive = torch.stack([e[0] for e in encoded]).mean(dim=0)
            negative = encoded[0][1]
        else:
            blank = Image.new("RGB", (8, 8))
            _, negative = pipe.encode_image(blank, device, 1, hidden_states)
            positive = negative
        positives.append(positive)
        negatives.append(negative)
    # (batch, 1 image, ...); with guidance the pipeline expects [negatives, positives].
    positive_batch = torch.stack(positives)
    if not classifier_free:
        return [positive_batch]
    return [torch.cat([torch.stack(negatives), positive_batch])]


def uses_classifier_free_guidance(pipe: Any, guidance: float) -> bool:
    """What the SD/SDXL pipelines decide: guidance > 1 unless the UNet is guidance-distilled."""
    unet = getattr(pipe, "unet", None)
    distilled = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
    return guidance > 1.0 and not distilled
