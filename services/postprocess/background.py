"""Optional background removal for portraits: an RGBA "cutout" rendition (PNG with alpha).

Off unless `IMAGEGEN_POSTPROCESS_BACKGROUND_MODEL` names a segmentation model. The model
contract (TorchScript, CPU):

- input: one float32 tensor of shape 1x3xSxS, RGB in [0, 1], where S is
  `IMAGEGEN_POSTPROCESS_BACKGROUND_INPUT_SIZE` (320 by default; the image is resized to it);
- output: a tensor of shape 1x1xHxW (any H, W) with the foreground probability of each
  pixel in [0, 1], or a tuple/list whose first element is that tensor (U^2-Net returns its
  fused map first, then side outputs). Values outside [0, 1] are clipped.

Normalisation belongs inside the exported module, so one contract fits every model: wrap
U^2-Net as `model((x - mean) / std)` with ImageNet mean/std and MODNet as
`model(x * 2 - 1)` (taking its matte), then `torch.jit.trace` or `torch.jit.script` and
`save`. The mask is resized back to the image's size and becomes its alpha channel; an
image that already has transparency keeps the lower of the two alphas.

A model that cannot be loaded, or whose output does not fit the contract on a test input,
stops the service at start-up (ConfigurationError). A failure on one image skips that
image's cutout and keeps its other renditions.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageChops

from imagegen.errors import ConfigurationError
from schemas.requests import JobKind
from services.postprocess.renditions import RenderedImage, enhance, png_bytes

log = logging.getLogger(__name__)

PORTRAIT_KINDS = frozenset({JobKind.PORTRAIT, JobKind.REFERENCE})
"""Portraits and a character's reference images get a cutout; scenes and packs do not."""


class BackgroundRemover(Protocol):
    """Foreground mask ("L", the image's size, 255 = foreground) of an image."""

    name: str

    def mask(self, image: Image.Image) -> Image.Image: ...


class TorchScriptSegmenter:
    """A TorchScript segmentation model that follows the contract above (CPU)."""

    def __init__(self, path: Path, input_size: int) -> None:
        import torch  # heavy: only when a model is configured

        self._torch: Any = torch

        if not path.is_file():
            raise ConfigurationError(f"IMAGEGEN_POSTPROCESS_BACKGROUND_MODEL: no file at {path}")
        try:
            model = self._torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise ConfigurationError(
                f"IMAGEGEN_POSTPROCESS_BACKGROUND_MODEL: {path} is not a TorchScript file: {exc}"
            ) from exc
        self.name = f"torchscript:{path.name}"
        self._model: Any = model.eval()
        self._size = input_size
        # One image at a time: torch uses every core for one forward pass anyway.
        self._lock = threading.Lock()
        try:
            self._probabilities(np.zeros((input_size, input_size, 3), dtype=np.float32))
        except (RuntimeError, ValueError) as exc:
            raise ConfigurationError(
                f"IMAGEGEN_POSTPROCESS_BACKGROUND_MODEL: {path} does not map a 1x3x{input_size}"
                f"x{input_size} image to a 1x1xHxW mask: {exc}"
            ) from exc

    def _probabilities(self, pixels: np.ndarray[Any, np.dtype[np.float32]]) -> Any:
        torch = self._torch
        batch = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()
        with self._lock, torch.inference_mode():
            out = self._model(batch)
        if isinstance(out, tuple | list):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or tuple(out.shape[:2]) != (1, 1):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"output is {shape}, expected 1x1xHxW")
        return out[0, 0].float().clamp(0.0, 1.0).numpy()

    def mask(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB").resize((self._size, self._size), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.float32) / 255.0
        probabilities = self._probabilities(pixels)
        small = Image.fromarray(np.rint(probabilities * 255.0).astype(np.uint8), "L")
        return small.resize(image.size, Image.Resampling.BILINEAR)


def load_background_remover(path: Path | None, input_size: int) -> BackgroundRemover | None:
    """The configured remover, or None when no model is configured."""
    if path is None:
        return None
    return TorchScriptSegmenter(path, input_size)


def cut_out(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image as RGBA with `mask` as its alpha (the lower alpha where it had one)."""
    rgba = image.convert("RGBA")
    alpha = mask.convert("L")
    if alpha.size != rgba.size:
        alpha = alpha.resize(rgba.size, Image.Resampling.BILINEAR)
    rgba.putalpha(ImageChops.darker(rgba.getchannel("A"), alpha))
    return rgba


def render_cutout(decoded: Image.Image, remover: BackgroundRemover) -> RenderedImage | None:
    """The "cutout" rendition of a decoded image (enhanced like the display one); None if
    the model fails."""
    image = enhance(decoded)
    try:
        mask = remover.mask(image)
    except (RuntimeError, ValueError) as exc:
        log.warning("event=background_removal_failed remover=%s error=%r", remover.name, exc)
        return None
    cut = cut_out(image, mask)
    return RenderedImage("cutout", png_bytes(cut), cut.width, cut.height, "png", "image/png")
