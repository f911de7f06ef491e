"""Technical image quality: is this a crisp, well-exposed, contrasty, colourful picture?

`ImageStatsQualityScorer` judges the pixels alone (no model, no reference), on a grey
or RGB copy downscaled to at most `WORK_SIDE` px a side so that scores of different
output sizes compare. Four components, each in [0, 1]:

- sharpness: variance v of the 4-neighbour Laplacian of the grey image (0..255 scale),
  on a log scale: `clip(log10(1 + v) / log10(501), 0, 1)`: a flat frame is 0, v = 10 is
  0.39, v = 100 (the usual "blurry" cut-off for this measure) is 0.74, v >= 500 is 1.
  A 64 px face enlarged 4x (the demo model's output) has v of about 5 (0.3). Noise also
  raises v: this measures edge energy, not focus.
- exposure: `1 - clip((f - 0.05) / 0.45, 0, 1)` where f is the fraction of pixels whose
  luma is clipped (<= 8 or >= 247): up to 5 % is free (a dark backdrop, a highlight),
  half the picture crushed to black or blown to white is 0.
- contrast: RMS contrast, the standard deviation of luma, `clip(std / 64, 0, 1)`
  (a typical photograph's std is 50-70 on the 0..255 scale).
- colourfulness: Hasler & Süsstrunk (2003), `M = sqrt(sd_rg² + sd_yb²) + 0.3 *
  sqrt(mean_rg² + mean_yb²)` with rg = R - G and yb = (R + G) / 2 - B, as
  `clip(M / 59, 0, 1)` (59 is their "quite colourful"). Weighted least: a pencil
  sketch or a noir page is grey on purpose.

score = exposure * (0.5 sharpness + 0.3 contrast + 0.2 colourfulness), rounded to 4
places; deterministic for the same pixels. Exposure multiplies rather than adds: the
edges and colours of a half blown-out frame say nothing good about it (added, its
clipped edges would score it above a clean but soft picture). A black or white frame
scores 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from services.postprocess.upscale import fit_within

WORK_SIDE = 512
WEIGHTS: dict[str, float] = {"sharpness": 0.5, "contrast": 0.3, "colourfulness": 0.2}
"""How the components other than exposure add up; exposure multiplies the sum."""
_CLIP_LOW, _CLIP_HIGH = 8, 247
_CLIPPED_FREE, _CLIPPED_AT_ZERO = 0.05, 0.5
_SHARP_VARIANCE = 500.0
_CONTRAST_FULL = 64.0
_COLOURFUL_FULL = 59.0

Levels = NDArray[np.uint8]


@dataclass(frozen=True)
class Quality:
    """A 0..1 quality score and the 0..1 components it was combined from."""

    score: float
    components: dict[str, float] = field(default_factory=dict)


class QualityScorer(Protocol):
    """A deterministic 0..1 quality score of an image (blocking: call it off the loop)."""

    def score(self, image: Image.Image) -> Quality: ...


def _clip01(value: float) -> float:
    return min(1.0, max(0.0, value))


def working_copy(image: Image.Image) -> Image.Image:
    """RGB, transparency flattened onto mid-grey, at most WORK_SIDE px a side."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        rgb = Image.alpha_composite(backdrop, rgba).convert("RGB")
    elif image.mode != "RGB":
        rgb = image.convert("RGB")
    else:
        rgb = image  # read only: the reduction below makes a new image
    if max(rgb.size) > WORK_SIDE:
        # What `thumbnail((WORK_SIDE, WORK_SIDE), BOX)` does to a loaded image, without
        # the two full-size copies it needs (it works in place).
        size = fit_within(rgb.size, WORK_SIDE)
        rgb = rgb.resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    return rgb


# Integer work throughout (exact), then the statistics in float64 as numpy takes them: the
# same numbers as float64 arrays gave, at a third of the memory traffic.


def sharpness(grey: Levels) -> float:
    if min(grey.shape) < 3:
        return 0.0
    # The 4-neighbour Laplacian (ksize=1), exact in 16 bits; the border rows are dropped.
    laplacian = cv2.Laplacian(grey, cv2.CV_16S, ksize=1)[1:-1, 1:-1]
    variance = float(laplacian.var())
    return _clip01(math.log10(1.0 + variance) / math.log10(1.0 + _SHARP_VARIANCE))


def exposure(grey: Levels) -> float:
    clipped = float(np.mean((grey <= _CLIP_LOW) | (grey >= _CLIP_HIGH)))
    return 1.0 - _clip01((clipped - _CLIPPED_FREE) / (_CLIPPED_AT_ZERO - _CLIPPED_FREE))


def contrast(grey: Levels) -> float:
    return _clip01(float(grey.std()) / _CONTRAST_FULL)


def colourfulness(rgb: Levels) -> float:
    red, green, blue = (rgb[..., i].astype(np.int16) for i in range(3))
    rg = red - green
    yb2 = red + green - 2 * blue  # twice yb = (R + G) / 2 - B, still exact in 16 bits
    spread = math.hypot(float(rg.std()), float(yb2.std()) / 2)
    offset = math.hypot(float(rg.mean()), float(yb2.mean()) / 2)
    return _clip01((spread + 0.3 * offset) / _COLOURFUL_FULL)


class ImageStatsQualityScorer:
    """Sharpness, exposure, contrast and colourfulness from pixel statistics (CPU, ms)."""

    name = "stats-v1"

    def score(self, image: Image.Image) -> Quality:
        rgb_image = working_copy(image)
        rgb: Levels = np.asarray(rgb_image)
        grey: Levels = np.asarray(rgb_image.convert("L"))
        components = {
            "sharpness": sharpness(grey),
            "exposure": exposure(grey),
            "contrast": contrast(grey),
            "colourfulness": colourfulness(rgb),
        }
        total = components["exposure"] * sum(
            weight * components[name] for name, weight in WEIGHTS.items()
        )
        return Quality(
            score=round(total, 4),
            components={name: round(value, 4) for name, value in components.items()},
        )
