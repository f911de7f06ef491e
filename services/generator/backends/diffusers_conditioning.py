"""How reference images steer a diffusers run: IP-Adapter, else img2img, else not at all.

Every image of a batch shares one conditioning kind (it is part of the batch key); the
per-image inputs (init images, IP-Adapter embeddings) are built one image at a time so
that an image comes out the same whether it ran alone or in a batch.

Multi-character images (`GenerationRequest.regions`): each character with references
gets its own adapter image set (the mean of its references' embeddings) and a mask of
its region (diffusers' IP-Adapter masking), so one character's face never steers
another's; a character without references gets no adapter image and is drawn from its
identity prompt alone. img2img starts from a canvas holding each character's first
reference in its own region. The masked regions are part of the batch key: masks are
one per call, shared by every image of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from services.generator.backends.base import GenerationRequest, Region, decode_image

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
    if not request.has_references:
        return Conditioning(NONE, None)
    if request.img2img_strength is not None:  # asked for explicitly: honour it
        return Conditioning(IMG2IMG, request.img2img_strength)
    if ip_adapter_scale is not None:
        return Conditioning(IP_ADAPTER, ip_adapter_scale)
    if reference_strength > 0:
        return Conditioning(IMG2IMG, reference_strength)
    return Conditioning(NONE, None)


def masked_regions(request: GenerationRequest) -> tuple[Region, ...]:
    """The regions an adapter image set is masked to: those of characters with references."""
    return tuple(r for r in request.regions if r.reference_images)


def init_image(request: GenerationRequest, width: int, height: int) -> Image.Image:
    """Where img2img starts from: the first reference at the generation size, or for a
    multi-character image each character's first reference filling its own region (grey
    where a character has none)."""
    if not request.regions:
        reference = decode_image(request.reference_images[0])
        return reference.resize((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), (128, 128, 128))
    for region in masked_regions(request):
        x0, y0, x1, y1 = region.pixels(width, height)
        if x1 > x0 and y1 > y0:
            first = decode_image(region.reference_images[0])
            canvas.paste(_cover(first, x1 - x0, y1 - y0), (x0, y0))
    return canvas


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` scaled to cover `width` x `height` and centre-cropped to it (no distortion)."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def reference_sets(request: GenerationRequest) -> list[list[Image.Image]]:
    """The adapter image sets of one image: one per masked region, or one for the whole."""
    if request.regions:
        return [[decode_image(b) for b in r.reference_images] for r in masked_regions(request)]
    return [[decode_image(b) for b in request.reference_images]]


def region_masks(regions: tuple[Region, ...], width: int, height: int) -> list[torch.Tensor]:
    """`cross_attention_kwargs["ip_adapter_masks"]` for one adapter: shape
    (1, regions, height, width), 1 inside each region and 0 outside."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    masks = []
    for region in regions:
        mask = Image.new("L", (width, height), 0)
        x0, y0, x1, y1 = region.pixels(width, height)
        mask.paste(255, (x0, y0, x1, y1))
        masks.append(mask)
    processed = IPAdapterMaskProcessor().preprocess(masks, height=height, width=width)
    return [processed.reshape(1, processed.shape[0], processed.shape[2], processed.shape[3])]


def ip_adapter_embeds(
    pipe: Any,
    references: list[list[list[Image.Image]] | None],
    *,
    classifier_free: bool,
) -> list[torch.Tensor]:
    """`ip_adapter_image_embeds` for a batch, in batch order: per image, one embedding per
    adapter image set (see `reference_sets`), shape (batch, sets, ...).

    A set's embedding is the mean of its references' (several photos of one face average
    to a steadier identity). An image without references gets the encoder's "no image"
    embedding, which the pipeline needs whenever an adapter is loaded (its scale is then 0).
    """
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    from diffusers.models.embeddings import ImageProjection

    hidden_states = not isinstance(projection, ImageProjection)
    device = pipe._execution_device
    width = max((len(sets) for sets in references if sets), default=1)
    positives: list[torch.Tensor] = []
    negatives: list[torch.Tensor] = []
    for sets in references:
        set_positives: list[torch.Tensor] = []
        set_negatives: list[torch.Tensor] = []
        if sets:
            for images in sets:
                encoded = [pipe.encode_image(image, device, 1, hidden_states) for image in images]
                set_positives.append(torch.stack([e[0] for e in encoded]).mean(dim=0))
                set_negatives.append(encoded[0][1])
        else:
            _, blank = pipe.encode_image(Image.new("RGB", (8, 8)), device, 1, hidden_states)
            set_positives = set_negatives = [blank] * width
        # Each encoding is (1, ...): concatenated, the sets lie along dim 0.
        positives.append(torch.cat(set_positives))
        negatives.append(torch.cat(set_negatives))
    # (batch, sets, ...); with guidance the pipeline expects [negatives, positives].
    positive_batch = torch.stack(positives)
    if not classifier_free:
        return [positive_batch]
    return [torch.cat([torch.stack(negatives), positive_batch])]


def uses_classifier_free_guidance(pipe: Any, guidance: float) -> bool:
    """What the SD/SDXL pipelines decide: guidance > 1 unless the UNet is guidance-distilled."""
    unet = getattr(pipe, "unet", None)
    distilled = unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is not None
    return guidance > 1.0 and not distilled
