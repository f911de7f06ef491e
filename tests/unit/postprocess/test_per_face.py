"""Per-face scoring: faces assigned to a scene's characters by best total match.

With real dlib embeddings on real (demo GAN) face photos, and through the handler with an
encoder whose faces we choose.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from imagegen.blobstore import InMemoryBlobStore, put_staging
from imagegen.kafka import Record, encode
from imagegen.kafka.memory import InMemoryBroker
from schemas.events import EVENT_ADAPTER, ConsistencyFlagged
from schemas.images import ProcessedImage
from schemas.jobs import CharacterRegion
from schemas.topics import TopicNames
from services.generator.backends.demo_faces import demo_face
from services.postprocess.consistency import (
    DRIFTED,
    MISSING,
    NO_FACE,
    RECOGNISED,
    ConsistencyScorer,
    DlibFaceEncoder,
    Embedding,
    Face,
    assign,
)
from services.postprocess.handlers import ConsistencyCheck, Postprocessor
from services.postprocess.settings import PostprocessSettings
from services.postprocess.variations import InMemoryVariationStore
from tests.unit.image_builders import image_identity, raw_image
from tests.unit.postprocess.demo_images import demo_backend

TOPICS = TopicNames("unit")
THRESHOLD = PostprocessSettings().consistency_threshold
# Demo identities (character seeds) and image seeds whose faces dlib's HOG finds at once:
# the fixture stays fast (the CNN detector only runs where HOG misses).
CHILD, GRANDMOTHER, STRANGER = 1013, 4052, 2


def test_assignment_is_best_total_not_nearest_per_face() -> None:
    # Both characters' nearest face is face 0; the best total gives face 1 to the first.
    scores = [[0.9, 0.8], [0.95, 0.1]]
    assert assign(scores) == {0: 1, 1: 0}
    # Fewer faces than characters: the best total leaves the worse match out.
    assert assign([[0.2], [0.7], [0.4]]) == {1: 0}
    assert assign([[0.5, 0.6, 0.9, 0.1]]) == {0: 2}
    assert assign([]) == {}


@pytest.fixture(scope="module")
def encoder() -> DlibFaceEncoder:
    return DlibFaceEncoder()


@pytest.fixture(scope="module")
def faces(encoder: DlibFaceEncoder) -> Iterator[dict[int, list[Image.Image]]]:
    """Three detectable 256 px demo faces of each identity."""
    backend = demo_backend()
    found: dict[int, list[Image.Image]] = {}
    for identity in (CHILD, GRANDMOTHER, STRANGER):
        found[identity] = []
        for index in range(24):
            image = demo_face(backend, identity, index, 256)
            if encoder.faces(image):
                found[identity].append(image)
            if len(found[identity]) == 3:
                break
        assert len(found[identity]) == 3, f"too few detectable faces for identity {identity}"
    yield found


def _scene(left: Image.Image, right: Image.Image) -> Image.Image:
    """Two people side by side on one page."""
    canvas = Image.new("RGB", (560, 300), (200, 210, 190))
    canvas.paste(left, (10, 22))
    canvas.paste(right, (294, 22))
    return canvas


def _cast(
    scorer: ConsistencyScorer, faces: dict[int, list[Image.Image]]
) -> list[tuple[str, Embedding | None]]:
    """The child and the grandmother, each from two of its own photos."""
    cast: list[tuple[str, Embedding | None]] = []
    for name, identity in (("child", CHILD), ("grandmother", GRANDMOTHER)):
        first, second, _ = faces[identity]
        keys = [f"{name}-1", f"{name}-2"]
        cast.append(
            (name, scorer.identity_embedding(keys, dict(zip(keys, (first, second), strict=True))))
        )
    return cast


def test_two_characters_both_recognised_either_way_round(
    encoder: DlibFaceEncoder, faces: dict[int, list[Image.Image]]
) -> None:
    scorer = ConsistencyScorer(encoder, threshold=THRESHOLD)
    cast = _cast(scorer, faces)
    child, grandmother = faces[CHILD][2], faces[GRANDMOTHER][2]
    one = scorer.assess_cast(_scene(child, grandmother), cast)
    swapped = scorer.assess_cast(_scene(grandmother, child), cast)
    for result in (one, swapped):
        assert [(r.character_id, r.status) for r in result.characters] == [
            ("child", RECOGNISED),
            ("grandmother", RECOGNISED),
        ]
        assert result.drifted == []
        assert result.score is not None and result.score >= THRESHOLD
    # The same faces in other places: each character keeps its own score.
    for a, b in zip(one.characters, swapped.characters, strict=True):
        assert a.score == pytest.approx(b.score, abs=0.02)


def test_a_strangers_face_flags_exactly_that_character(
    encoder: DlibFaceEncoder, faces: dict[int, list[Image.Image]]
) -> None:
    scorer = ConsistencyScorer(encoder, threshold=THRESHOLD)
    cast = _cast(scorer, faces)
    result = scorer.assess_cast(_scene(faces[STRANGER][0], faces[CHILD][2]), cast)
    statuses = {r.character_id: r.status for r in result.characters}
    assert statuses == {"child": RECOGNISED, "grandmother": DRIFTED}
    assert result.drifted == ["grandmother"]
    assert result.score is not None and result.score < THRESHOLD
    # Only the child on the page: the grandmother is missing, and only she is flagged.
    alone = scorer.assess_cast(faces[CHILD][2], cast)
    assert {r.character_id: r.status for r in alone.characters} == {
        "child": RECOGNISED,
        "grandmother": MISSING,
    }
    assert alone.drifted == ["grandmother"]


# --- through the handler, with faces we choose -----------------------------------------


class SpotEncoder:
    """Each red spot in the top row of the image is a face; its embedding is its red."""

    name = "spots"

    def faces(self, image: Image.Image, expected: int = 1) -> list[Face]:
        row = np.asarray(image.convert("RGB"))[0, :, 0]
        found = []
        for x in range(0, row.shape[0], 16):
            if row[x]:
                found.append(Face((x, 0, x + 16, 16), np.array([row[x] / 255.0])))
        return found

    def embed(self, image: Image.Image) -> Embedding | None:
        found = self.faces(image)
        return found[0].embedding if found else None


def _png(*reds: int) -> bytes:
    """One 16 px spot per red value, left to right (0: no spot)."""
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    for i, red in enumerate(reds):
        image.paste((red, 10, 10), (i * 16, 0, i * 16 + 16, 16))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


async def _run(*reds: int) -> tuple[list[ProcessedImage], list[ConsistencyFlagged]]:
    """A two-character scene (child: red 255, grandmother: red 100) with spots `reds`."""
    broker, blobs = InMemoryBroker(), InMemoryBlobStore()
    child = await put_staging(blobs, _png(255), "image/png")
    grandmother = await put_staging(blobs, _png(100), "image/png")
    post = Postprocessor(
        PostprocessSettings(consistency_threshold=0.9),
        blobs,
        broker.publisher(),
        TOPICS,
        consistency=ConsistencyCheck(
            ConsistencyScorer(SpotEncoder(), threshold=0.9), InMemoryVariationStore()
        ),
    )
    raw = await raw_image(
        blobs,
        _png(*reds),
        image=image_identity(character_id="child"),
        identity_keys=[child.key, grandmother.key],
        layout=[
            CharacterRegion(
                character_id="child", x0=0, y0=0, x1=0.5, y1=1, reference_keys=[child.key]
            ),
            CharacterRegion(
                character_id="grandmother",
                x0=0.5,
                y0=0,
                x1=1,
                y1=1,
                reference_keys=[grandmother.key],
            ),
        ],
        max_variations=1,
    )
    await post.on_raw_image(
        Record(topic=TOPICS.images_raw, partition=0, offset=0, key="j", value=encode(raw))
    )
    processed = [
        ProcessedImage.model_validate_json(r.value) for r in broker.records(TOPICS.images_processed)
    ]
    events = [EVENT_ADAPTER.validate_json(r.value) for r in broker.records(TOPICS.events)]
    return processed, [e for e in events if isinstance(e, ConsistencyFlagged)]


async def test_swapped_faces_are_assigned_and_stored_per_character() -> None:
    for reds in ((255, 100), (100, 255)):
        (image,), flags = await _run(*reds)
        assert flags == []
        assert not image.flagged
        assert {k: (v.status, v.score) for k, v in image.character_scores.items()} == {
            "child": ("recognised", 1.0),
            "grandmother": ("recognised", 1.0),
        }
        assert image.consistency_score == 1.0 and image.not_scored_reason is None


async def test_only_the_drifted_character_is_flagged_and_redrawn() -> None:
    processed, (flag,) = await _run(250, 30)  # the grandmother's face is someone else's
    assert processed == []  # held back: a new-seed variation is drawn
    assert flag.data.characters == ["grandmother"] and not flag.data.final


async def test_an_image_without_faces_says_not_scored_and_why() -> None:
    (image,), flags = await _run(0)
    assert flags == [] and image.consistency_score is None
    assert image.not_scored_reason == NO_FACE
    assert {v.status for v in image.character_scores.values()} == {"not_scored"}
