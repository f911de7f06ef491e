"""Consistency scoring: is this image the same person as the character's identity images?

A `FaceEncoder` turns an image into an identity embedding (or None when it finds no
face); `ConsistencyScorer` compares an image's embedding with the mean embedding of the
character's identity images (uploaded photos and its generated reference set).

The score is `1 - euclidean distance` between 128-d dlib embeddings, clipped to [0, 1].
dlib's model puts the same person at a distance of about 0.1-0.25 and different people
around 0.6-0.7, and its authors' decision threshold is 0.6; the default threshold here is
a score of 0.45 (distance 0.55), a little stricter than dlib's, so that a drifted face is
caught before it looks like someone else. `scripts/calibrate_consistency.py` prints the
score distributions the threshold was checked against. An image without a detectable face
(some styles, scenery) is "not scored" (None), never a made-up number.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagegen.errors import ConfigurationError

Embedding = NDArray[np.float64]

# dlib's HOG detector misses faces below ~80 px; small images (the 64 px demo faces) are
# upscaled first.
_MIN_SIDE = 256


class FaceEncoder(Protocol):
    """Identity embedding of the most prominent face, or None when no face is found."""

    name: str

    def embed(self, image: Image.Image) -> Embedding | None: ...


def _model_dir() -> Path:
    # Located without importing the package: it imports pkg_resources, which recent
    # setuptools no longer ships.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ConfigurationError("face_recognition_models is not installed")
    return Path(spec.origin).parent / "models"


class DlibFaceEncoder:
    """dlib's ResNet face embedding with its 5-point landmark model (offline, CPU)."""

    name = "dlib-resnet-v1"

    def __init__(self) -> None:
        import dlib  # heavy native import: only when a scorer is built

        models = _model_dir()
        self._detector: Any = dlib.get_frontal_face_detector()
        self._landmarks: Any = dlib.shape_predictor(
            str(models / "shape_predictor_5_face_landmarks.dat")
        )
        self._encoder: Any = dlib.face_recognition_model_v1(
            str(models / "dlib_face_recognition_resnet_model_v1.dat")
        )
        # dlib objects are not documented as thread-safe; images are scored one at a time.
        self._lock = threading.Lock()

    def embed(self, image: Image.Image) -> Embedding | None:
        rgb = image.convert("RGB")
        if min(rgb.size) < _MIN_SIDE:
            scale = _MIN_SIDE / min(rgb.size)
            rgb = rgb.resize(
                (round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS
            )
        pixels = np.asarray(rgb, dtype=np.uint8)
        with self._lock:
            # At the image's own scale first (faces of 80 px and up: every portrait, most
            # scenes) and upsampled once only when that finds none: 4x fewer pixels
            # scanned for the common case (a 1024 px embedding: 427 -> 167 ms here).
            faces = self._detector(pixels, 0) or self._detector(pixels, 1)
            if not faces:
                return None
            face = max(faces, key=lambda r: r.width() * r.height())
            shape = self._landmarks(pixels, face)
            vector = self._encoder.compute_face_descriptor(pixels, shape)
        return np.asarray(vector, dtype=np.float64)


@dataclass(frozen=True)
class Assessment:
    """An image's face embedding (None: no face found) and its score (None: not scored)."""

    score: float | None
    embedding: Embedding | None
    encoder: str

    def embedding_list(self) -> list[float] | None:
        return None if self.embedding is None else [float(v) for v in self.embedding]


def score(embedding: Embedding, reference: Embedding) -> float:
    distance = float(np.linalg.norm(embedding - reference))
    return round(min(1.0, max(0.0, 1.0 - distance)), 4)


class ConsistencyScorer:
    """Scores images against identity images; identity embeddings are cached by key.

    Identity keys are content-addressed or versioned, so a cached embedding never goes
    stale; the cache is bounded.
    """

    def __init__(self, encoder: FaceEncoder, *, threshold: float, cache_size: int = 512) -> None:
        self.encoder = encoder
        self.threshold = threshold
        self._cache: OrderedDict[str, Embedding | None] = OrderedDict()
        self._cache_size = cache_size

    def known(self, key: str) -> bool:
        return key in self._cache

    def identity_embedding(
        self, keys: Sequence[str], loaded: Mapping[str, Image.Image]
    ) -> Embedding | None:
        """Mean embedding of the identity images; `loaded` holds those not cached yet."""
        vectors = []
        for key in keys:
            if key in self._cache:
                self._cache.move_to_end(key)
                vector = self._cache[key]
            elif key in loaded:
                vector = self._remember(key, self.encoder.embed(loaded[key]))
            else:
                continue  # unreadable or deleted identity image: score against the rest
            if vector is not None:
                vectors.append(vector)
        if not vectors:
            return None
        mean: Embedding = np.mean(np.stack(vectors), axis=0)
        return mean

    def _remember(self, key: str, vector: Embedding | None) -> Embedding | None:
        self._cache[key] = vector
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return vector

    def score(self, image: Image.Image, reference: Embedding | None) -> float | None:
        """None when there is nothing to compare: no identity face, or no face in `image`."""
        if reference is None:
            return None
        return self.assess(image, reference).score

    def assess(self, image: Image.Image, reference: Embedding | None) -> Assessment:
        """The image's embedding (kept with the image: reference images become identity
        images) and its score against `reference` when both have a face."""
        embedding = self.encoder.embed(image)
        value = None if embedding is None or reference is None else score(embedding, reference)
        return Assessment(value, embedding, self.encoder.name)
