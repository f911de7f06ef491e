"""Finding faces with dlib: one cascade for every service that needs faces.

HOG at the image's own scale first (cheap); where it finds fewer faces than expected,
dlib's CNN detector (MMOD, the weights `face_recognition_models` ships) on at most
`CNN_MAX_SIDE` px; then, for small images only, HOG upsampled once. HOG alone missed every
image of some demo identities; the cascade pays the CNN's cost only where HOG missed
(bench/face_detection.py has the rates). Postprocess embeds the faces it finds for
consistency scoring; the gateway counts them on uploaded reference photos.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagegen.errors import ConfigurationError

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]

MIN_SIDE = 256
"""dlib's detectors miss faces below ~40-80 px: smaller images are upscaled first."""
CNN_MAX_SIDE = 384
"""The CNN costs ~10-20x HOG per pixel: it runs on at most this long side (a face a sixth
of a 1024 px scene is still ~60 px there)."""
UPSAMPLE_BELOW = 400
"""HOG upsampled once (4x the pixels) only helps faces under ~80 px: small images only."""


def model_dir() -> Path:
    """face_recognition_models' weights folder, located without importing the package (it
    imports pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ConfigurationError("face_recognition_models is not installed")
    return Path(spec.origin).parent / "models"


def prepare(image: Image.Image) -> Image.Image:
    """RGB, upscaled so that its short side is at least `MIN_SIDE`."""
    rgb = image.convert("RGB")
    if min(rgb.size) < MIN_SIDE:
        scale = MIN_SIDE / min(rgb.size)
        rgb = rgb.resize(
            (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS
        )
    return rgb


def box_of(rect: Any) -> Box:
    return (rect.left(), rect.top(), rect.right(), rect.bottom())


def overlaps(a: Box, b: Box) -> bool:
    """True when two boxes are the same face (intersection over union above 0.3)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return union > 0 and inter / union > 0.3


class FaceCascade:
    """HOG, then the CNN, then upsampled HOG, each only while too few faces are found.

    dlib objects are not documented as thread-safe: detection holds a lock."""

    def __init__(self, dlib: Any, models: Path | None = None) -> None:
        self._hog: Any = dlib.get_frontal_face_detector()
        self._cnn: Any = dlib.cnn_face_detection_model_v1(
            str((models or model_dir()) / "mmod_human_face_detector.dat")
        )
        self._rectangle: Any = dlib.rectangle
        self.lock = threading.Lock()

    def detect(self, pixels: NDArray[np.uint8], expected: int = 1) -> list[Any]:
        """dlib rectangles of the faces in RGB `pixels` (call with `lock` held)."""
        found: list[Any] = list(self._hog(pixels, 0))
        if len(found) >= expected:
            return found
        height, width = pixels.shape[:2]
        scale = min(1.0, CNN_MAX_SIDE / max(height, width))
        small = pixels
        if scale < 1.0:
            small = np.asarray(
                Image.fromarray(pixels).resize((round(width * scale), round(height * scale)))
            )
        for hit in self._cnn(small, 0):
            r = hit.rect
            box = self._rectangle(
                round(r.left() / scale),
                round(r.top() / scale),
                round(r.right() / scale),
                round(r.bottom() / scale),
            )
            if not any(overlaps(box_of(box), box_of(f)) for f in found):
                found.append(box)
        if len(found) >= expected or max(height, width) >= UPSAMPLE_BELOW:
            return found
        for box in self._hog(pixels, 1):
            if not any(overlaps(box_of(box), box_of(f)) for f in found):
                found.append(box)
        return found

    def largest_share(self, image: Image.Image) -> float:
        """The largest face's share of the image's area (0: no face found)."""
        rgb = prepare(image)
        pixels = np.asarray(rgb, dtype=np.uint8)
        with self.lock:
            boxes = [box_of(rect) for rect in self.detect(pixels)]
        areas = [max(0, x1 - x0) * max(0, y1 - y0) for x0, y0, x1, y1 in boxes]
        return min(1.0, max(areas, default=0) / (rgb.width * rgb.height))

    def count(self, image: Image.Image) -> int:
        """How many faces `image` shows (at least one looked for)."""
        pixels = np.asarray(prepare(image), dtype=np.uint8)
        with self.lock:
            return len(self.detect(pixels))


def load_cascade() -> FaceCascade | None:
    """The cascade when dlib and face_recognition_models are installed, else None."""
    try:
        dlib = importlib.import_module("dlib")
        models = model_dir()
    except (ImportError, ConfigurationError) as exc:
        log.info("event=face_detector_unavailable reason=%r", str(exc))
        return None
    return FaceCascade(dlib, models)
