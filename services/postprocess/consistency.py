"""Consistency scoring: is this image the same person as the character's identity images?

A `FaceEncoder` finds the faces in an image and embeds each one's identity;
`ConsistencyScorer` assigns the faces to the image's characters (best total match: an
assignment, not each face's nearest character) and scores each character against the mean
embedding of its identity images (uploaded photos and its generated reference set).

The score is `1 - euclidean distance` between 128-d dlib embeddings, clipped to [0, 1].
dlib's model puts the same person at a distance of about 0.1-0.25 and different people
around 0.6-0.7, and its authors' decision threshold is 0.6; the default threshold here is
a score of 0.45 (distance 0.55), a little stricter than dlib's, so that a drifted face is
caught before it looks like someone else. `scripts/calibrate_consistency.py` prints the
score distributions the threshold was checked against. An image without a detectable face
(some styles, scenery) is "not scored" (None) with its reason, never a made-up number.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagegen.faces import FaceCascade, box_of, model_dir, prepare
from schemas.images import CharacterScore, RawImage

Embedding = NDArray[np.float64]


@dataclass(frozen=True)
class Face:
    """One face found in an image: its box (x0, y0, x1, y1 in the image's own pixels),
    area and identity embedding."""

    box: tuple[int, int, int, int]
    embedding: Embedding

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return max(0, x1 - x0) * max(0, y1 - y0)


class FaceEncoder(Protocol):
    """Finds faces and embeds their identity."""

    name: str

    def faces(self, image: Image.Image, expected: int = 1) -> list[Face]:
        """Every face found, largest first (empty: no face); `expected` faces (the cast's
        size) is how hard to look."""
        ...

    def embed(self, image: Image.Image) -> Embedding | None:
        """The most prominent face's embedding, or None when no face is found."""
        ...


class DlibFaceEncoder:
    """dlib's ResNet face embedding with its 5-point landmark model (offline, CPU), of the
    faces the shared cascade finds (imagegen/faces.py: HOG, then dlib's CNN where HOG finds
    fewer faces than expected, then HOG upsampled on small images)."""

    name = "dlib-resnet-v1"

    def __init__(self) -> None:
        import dlib  # heavy native import: only when a scorer is built

        models = model_dir()
        self._cascade = FaceCascade(dlib, models)
        self._landmarks: Any = dlib.shape_predictor(
            str(models / "shape_predictor_5_face_landmarks.dat")
        )
        self._encoder: Any = dlib.face_recognition_model_v1(
            str(models / "dlib_face_recognition_resnet_model_v1.dat")
        )

    def faces(self, image: Image.Image, expected: int = 1) -> list[Face]:
        rgb = prepare(image)
        factor = image.width / rgb.width
        pixels = np.asarray(rgb, dtype=np.uint8)
        result = []
        # One image at a time through the cascade, landmarks and encoder (dlib objects).
        with self._cascade.lock:
            for rect in self._cascade.detect(pixels, expected):
                shape = self._landmarks(pixels, rect)
                vector = self._encoder.compute_face_descriptor(pixels, shape)
                x0, y0, x1, y1 = box_of(rect)
                result.append(
                    Face(
                        (
                            round(x0 * factor),
                            round(y0 * factor),
                            round(x1 * factor),
                            round(y1 * factor),
                        ),
                        np.asarray(vector, dtype=np.float64),
                    )
                )
        return sorted(result, key=lambda f: f.area, reverse=True)

    def embed(self, image: Image.Image) -> Embedding | None:
        found = self.faces(image)
        return found[0].embedding if found else None


# A character's outcome in one image.
RECOGNISED = "recognised"  # its face is there and scores at or above the threshold
DRIFTED = "drifted"  # the face assigned to it scores below the threshold
MISSING = "missing"  # fewer faces than characters: none was left for it
NOT_SCORED = "not_scored"  # nothing to compare: no identity face, or no face in the image

NO_FACE = "no face found in the image"
NO_IDENTITY = "no face found in the character's reference images"
# Faces beyond the largest few are background people: they bound the assignment's work.
_MAX_FACES = 8


@dataclass(frozen=True)
class CharacterResult:
    """One character's score in an image, and what it means."""

    character_id: str
    score: float | None
    status: str
    reason: str = ""


@dataclass(frozen=True)
class Assessment:
    """An image's scores: `score` is the worst scored character's (None: not scored, for
    `not_scored_reason`); `embedding` the main character's face (or the largest face)."""

    score: float | None
    embedding: Embedding | None
    encoder: str
    characters: tuple[CharacterResult, ...] = ()
    not_scored_reason: str | None = None

    def embedding_list(self) -> list[float] | None:
        return None if self.embedding is None else [float(v) for v in self.embedding]

    @property
    def drifted(self) -> list[str]:
        """Characters that drifted or are missing: the ones a re-draw is for."""
        return [c.character_id for c in self.characters if c.status in (DRIFTED, MISSING)]


def assign(scores: Sequence[Sequence[float]]) -> dict[int, int]:
    """The best total match of characters (rows) to faces (columns): character -> face.

    Exact, by enumeration: scenes have at most five characters and faces are capped at
    `_MAX_FACES`, so at most 8!/3! = 6,720 candidates. Each face goes to at most one
    character; when faces are fewer, the characters left out are those the best total
    leaves out.
    """
    rows = len(scores)
    cols = len(scores[0]) if rows else 0
    k = min(rows, cols)
    best: tuple[float, dict[int, int]] = (-1.0, {})
    for chosen in itertools.combinations(range(rows), k):
        for faces in itertools.permutations(range(cols), k):
            total = sum(scores[r][c] for r, c in zip(chosen, faces, strict=True))
            if total > best[0]:
                best = (total, dict(zip(chosen, faces, strict=True)))
    return best[1]


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
        """One character's assessment (its id left empty)."""
        return self.assess_cast(image, [("", reference)])

    def assess_cast(
        self, image: Image.Image, cast: Sequence[tuple[str, Embedding | None]]
    ) -> Assessment:
        """Every face in `image` assigned to the cast (character id, identity embedding;
        the first is the main character) by best total score, and each character scored.

        The embedding kept with the image is the main character's face, or the largest
        face: reference images become identity images.
        """
        scored = [(i, ref) for i, (_, ref) in enumerate(cast) if ref is not None]
        faces = self.encoder.faces(image, expected=max(1, len(scored)))[:_MAX_FACES]
        largest = faces[0].embedding if faces else None
        if not scored:
            return Assessment(
                None,
                largest,
                self.encoder.name,
                tuple(CharacterResult(cid, None, NOT_SCORED, NO_IDENTITY) for cid, _ in cast),
                NO_IDENTITY if cast else None,
            )
        if not faces:
            return Assessment(
                None,
                None,
                self.encoder.name,
                tuple(
                    CharacterResult(
                        cid, None, NOT_SCORED, NO_FACE if ref is not None else NO_IDENTITY
                    )
                    for cid, ref in cast
                ),
                NO_FACE,
            )
        matrix = [[score(face.embedding, ref) for face in faces] for _, ref in scored]
        chosen = assign(matrix)
        results: list[CharacterResult] = []
        main_face: Embedding | None = None
        by_cast = {index: row for row, (index, _) in enumerate(scored)}
        for index, (cid, _) in enumerate(cast):
            row = by_cast.get(index)
            if row is None:
                results.append(CharacterResult(cid, None, NOT_SCORED, NO_IDENTITY))
            elif row not in chosen:
                results.append(CharacterResult(cid, None, MISSING, "no face left for it"))
            else:
                value = matrix[row][chosen[row]]
                if index == 0:
                    main_face = faces[chosen[row]].embedding
                status = RECOGNISED if value >= self.threshold else DRIFTED
                results.append(CharacterResult(cid, value, status))
        # A missing character scores 0: the image does not show it.
        values = [
            r.score if r.score is not None else 0.0 for r in results if r.status != NOT_SCORED
        ]
        return Assessment(
            min(values),
            main_face if main_face is not None else largest,
            self.encoder.name,
            tuple(results),
        )


def cast_of(raw: RawImage) -> list[tuple[str, list[str]]]:
    """The image's characters and their identity keys, main character first: the layout's
    regions in a multi-character scene, else the image's one character."""
    if raw.layout:
        return [(region.character_id, list(region.reference_keys)) for region in raw.layout]
    return [(raw.image.character_id, list(raw.identity_keys))]


def character_scores(assessment: Assessment) -> dict[str, CharacterScore]:
    """The per-character map stored with the image (empty when nothing was checked)."""
    return {
        r.character_id: CharacterScore(score=r.score, status=r.status, reason=r.reason)
        for r in assessment.characters
        if r.character_id
    }
