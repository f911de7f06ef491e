"""Uploaded reference photos pass the image-safety check before anything is stored."""

from __future__ import annotations

from PIL import Image

from imagegen.safety import SafetyCheck, SafetyPolicy
from tests.unit.gateway.conftest import Gateway
from tests.unit.gateway.resources_support import FACE_JPEG, image_bytes


class _Scripted:
    """Classifies every photo with the unsafe probability it was given."""

    name = "scripted"

    def __init__(self, unsafe: float) -> None:
        self.unsafe = unsafe

    def classify(self, image: Image.Image) -> dict[str, float]:
        return {
            "drawing": 0,
            "hentai": 0,
            "neutral": 1 - self.unsafe,
            "porn": 0,
            "sexy": self.unsafe,
        }


def _files(*photos: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (f"p{i}.bin", data, "image/png")) for i, data in enumerate(photos)]


async def _upload(
    gateway: Gateway, user: str, unsafe: float, audience: str | None = None
) -> tuple[int, dict[str, object], str]:
    gateway.app.state.safety_check = SafetyCheck(_Scripted(unsafe), SafetyPolicy(0.8, 0.4))
    gateway.app.state.face_detector = None
    character = await gateway.create_character(user)
    path = f"/api/v1/characters/{character['id']}/reference-photos"
    form = {"audience": audience} if audience else None
    response = await gateway.client.post(
        path, files=_files(image_bytes("PNG"), FACE_JPEG), data=form, headers=gateway.auth(user)
    )
    return response.status_code, response.json(), str(character["id"])


async def test_a_refused_photo_uploads_nothing_and_is_named(gateway: Gateway, user: str) -> None:
    status, body, character = await _upload(gateway, user, unsafe=0.9)
    assert status == 422, body
    problems: list[dict[str, object]] = body["detail"]  # type: ignore[assignment]
    (problem,) = problems
    assert str(problem["msg"]).startswith("ContentPolicyViolation: refused by the image-safety")
    assert problem["loc"] == ["body", "photos", 0]
    count = await gateway.state.pool.fetchval(
        "SELECT count(*) FROM reference_photos WHERE character_id = $1", character
    )
    assert count == 0
    assert not [k for k in gateway.blobs.objects if k.startswith("references/")]


async def test_children_photos_are_held_to_the_stricter_threshold(
    gateway: Gateway, user: str
) -> None:
    status, body, _ = await _upload(gateway, user, unsafe=0.5)
    assert status == 201, body
    status, body, _ = await _upload(gateway, user, unsafe=0.5, audience="children")
    assert status == 422, body
    assert "0.500 > 0.40" in body["detail"][0]["msg"]  # type: ignore[index]


async def test_a_childrens_character_holds_its_photos_to_the_stricter_threshold(
    gateway: Gateway, user: str
) -> None:
    gateway.app.state.safety_check = SafetyCheck(_Scripted(0.5), SafetyPolicy(0.8, 0.4))
    gateway.app.state.face_detector = None
    character = await gateway.create_character(user, audience="children")
    response = await gateway.client.post(
        f"/api/v1/characters/{character['id']}/reference-photos",
        files=_files(FACE_JPEG),
        data={"audience": "general"},  # cannot loosen the character's own
        headers=gateway.auth(user),
    )
    assert response.status_code == 422, response.text
    assert "0.500 > 0.40" in response.json()["detail"][0]["msg"]
