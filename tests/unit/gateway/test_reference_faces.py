"""The upload face check finds faces with the cascade postprocess scores with
(imagegen/faces.py), so a photo is not refused for "no face" where HOG alone misses one."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imagegen.safety import SafetyCheck, default_model_dir
from services.gateway import references
from services.generator.backends.demo_faces import demo_face
from tests.unit.gateway.conftest import Gateway
from tests.unit.postprocess.demo_images import demo_backend

# A demo face (identity seed, pack index) in which dlib's HOG finds no face at any
# upsampling the gateway used, and the cascade's CNN finds one.
HOG_MISSES = (649421745, 1)


class _Safe:
    name = "safe"

    def classify(self, image: Image.Image) -> dict[str, float]:
        return {"drawing": 0.0, "hentai": 0.0, "neutral": 1.0, "porn": 0.0, "sexy": 0.0}


async def test_a_face_hog_misses_is_found_and_the_photo_uploaded(
    gateway: Gateway, user: str
) -> None:
    detector = references.load_face_detector()
    if detector is None:
        pytest.skip("dlib or face_recognition_models is not installed")
    dlib = pytest.importorskip("dlib")
    face = demo_face(demo_backend(), *HOG_MISSES, 512)
    grey = np.asarray(face.convert("L"))
    assert not dlib.get_frontal_face_detector()(grey, 1), "HOG alone finds no face in it"

    gateway.app.state.face_detector = detector
    gateway.app.state.safety_check = SafetyCheck(_Safe())
    character = await gateway.create_character(user)
    png = io.BytesIO()
    face.save(png, "PNG")
    response = await gateway.client.post(
        f"/api/v1/characters/{character['id']}/reference-photos",
        files=[("photos", ("face.png", png.getvalue(), "image/png"))],
        headers=gateway.auth(user),
    )
    assert response.status_code == 201, response.text
    assert [p["faces"] for p in response.json()["items"]] == [1]


async def test_a_close_up_upload_gets_the_classifiers_framed_look(
    gateway: Gateway, user: str
) -> None:
    if not (default_model_dir() / "package.json").is_file():
        pytest.skip("image-safety model not fetched: run scripts/fetch_safety_model.sh")
    if references.load_face_detector() is None:
        pytest.skip("dlib or face_recognition_models is not installed")
    # nsfwjs reads this close-up as "porn" on one view (0.87 measured): a children's refusal.
    face = demo_face(demo_backend(), 649421745, 2, 512)
    character = await gateway.create_character(user, audience="children")
    png = io.BytesIO()
    face.save(png, "PNG")
    response = await gateway.client.post(
        f"/api/v1/characters/{character['id']}/reference-photos",
        files=[("photos", ("face.png", png.getvalue(), "image/png"))],
        headers=gateway.auth(user),
    )
    assert response.status_code == 201, response.text
    verdict = gateway.app.state.safety_check.check(face, "children")
    assert verdict.score > 0.4 and verdict.framed_score is not None and not verdict.refused
