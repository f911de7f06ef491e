from __future__ import annotations

import struct
import sys
import zlib
from typing import Any

import pytest

from imagegen.blobstore import InMemoryBlobStore
from imagegen.errors import RetryableError
from services.gateway import characters, references
from tests.unit.gateway.conftest import Gateway
from tests.unit.gateway.resources_support import FACE_JPEG, custom_gateway, image_bytes


def _files(*photos: bytes, name: str = "p") -> list[tuple[str, tuple[str, bytes, str]]]:
    # The claimed type is deliberately wrong: the server sniffs the bytes.
    return [("photos", (f"{name}{i}.bin", data, "text/plain")) for i, data in enumerate(photos)]


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims huge dimensions (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = zlib.compress(b"\x00" * 1024)
    idat = b"IDAT" + data
    body += struct.pack(">I", len(data)) + idat + struct.pack(">I", zlib.crc32(idat))
    return b"\x89PNG\r\n\x1a\n" + body


async def _photo_rows(gateway: Gateway, character_id: Any) -> int:
    count: int = await gateway.state.pool.fetchval(
        "SELECT count(*) FROM reference_photos WHERE character_id = $1", character_id
    )
    return count


class _Detector:
    def __init__(self, faces: int) -> None:
        self.faces = faces

    def count(self, image: Any) -> int:
        return self.faces


async def test_upload_list_and_delete_with_the_real_face_detector(
    gateway: Gateway, user: str
) -> None:
    if references.load_face_detector() is None:
        pytest.skip("dlib is not installed")
    character = await gateway.create_character(user)
    path = f"/api/v1/characters/{character['id']}/reference-photos"
    response = await gateway.client.post(path, files=_files(FACE_JPEG), headers=gateway.auth(user))
    assert response.status_code == 201, response.text
    [photo] = response.json()["items"]
    assert (photo["contentType"], photo["width"], photo["height"]) == ("image/jpeg", 256, 256)
    assert photo["faces"] == 1
    assert photo["sizeBytes"] == len(FACE_JPEG)
    [key] = [k for k in gateway.blobs.objects if k.startswith(f"references/{user}/")]
    assert key.endswith(".jpg")
    assert gateway.blobs.objects[key][0] == FACE_JPEG

    # A blank picture has no face: refused, naming the photo, and nothing is written.
    blank = image_bytes("PNG", (300, 300))
    response = await gateway.client.post(path, files=_files(blank), headers=gateway.auth(user))
    assert response.status_code == 422
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body", "photos", 0]
    assert "no face" in problem["msg"]
    assert await _photo_rows(gateway, character["id"]) == 1

    listed = await gateway.client.get(path, headers=gateway.auth(user))
    assert [p["id"] for p in listed.json()["items"]] == [photo["id"]]
    shown = await gateway.client.get(
        f"/api/v1/characters/{character['id']}", headers=gateway.auth(user)
    )
    assert [p["id"] for p in shown.json()["referencePhotos"]] == [photo["id"]]
    spec = await characters.spec_for(gateway.state.pool, user, str(character["id"]))
    assert spec is not None and spec.reference_keys == [key]

    deleted = await gateway.client.delete(f"{path}/{photo['id']}", headers=gateway.auth(user))
    assert deleted.status_code == 204
    assert key not in gateway.blobs.objects
    assert (
        await gateway.client.delete(f"{path}/{photo['id']}", headers=gateway.auth(user))
    ).status_code == 404


async def test_without_a_detector_no_face_is_required(gateway: Gateway, user: str) -> None:
    gateway.app.state.face_detector = None
    character = await gateway.create_character(user)
    path = f"/api/v1/characters/{character['id']}/reference-photos"
    photos = [image_bytes("PNG"), image_bytes("JPEG", colour="red"), image_bytes("WEBP")]
    response = await gateway.client.post(path, files=_files(*photos), headers=gateway.auth(user))
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [p["contentType"] for p in items] == ["image/png", "image/jpeg", "image/webp"]
    assert [p["faces"] for p in items] == [None, None, None]


async def test_refusals_name_the_photo_and_change_nothing(gateway_db_url: str, user: str) -> None:
    async with custom_gateway(gateway_db_url, reference_max_bytes=50_000) as gw:
        gw.app.state.face_detector = _Detector(1)
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"
        ok = image_bytes("PNG")
        cases = [
            (_files(ok, b"GIF89a not really"), 422, ["body", "photos", 1], "JPEG, PNG or WebP"),
            (_files(ok, image_bytes("GIF")), 422, ["body", "photos", 1], "JPEG, PNG or WebP"),
            (_files(b""), 422, ["body", "photos", 0], "empty"),
            (_files(ok, b"\x00" * 60_000), 413, ["body", "photos", 1], "larger than"),
            (_files(_huge_png_header(100_000, 100_000)), 422, ["body", "photos", 0], "pixels"),
            (_files(b"\x89PNG\r\n\x1a\ntruncated"), 422, ["body", "photos", 0], "readable"),
            (
                _files(*[image_bytes("PNG", (8 + i, 8)) for i in range(9)]),
                422,
                ["body", "photos"],
                "between 1 and 8",
            ),
            (_files(ok, ok), 422, ["body", "photos", 1], "already uploaded"),
        ]
        for files, status_code, loc, words in cases:
            response = await gw.client.post(path, files=files, headers=gw.auth(user))
            assert response.status_code == status_code, (loc, response.text)
            problem = response.json()["detail"][0]
            assert problem["loc"] == loc, problem
            assert words in problem["msg"], problem
        assert await _photo_rows(gw, character["id"]) == 0
        assert not [k for k in gw.blobs.objects if k.startswith("references/")]
        missing = await gw.client.post(path, headers=gw.auth(user))
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "photos"]


async def test_at_most_eight_per_character_in_all(gateway: Gateway, user: str) -> None:
    gateway.app.state.face_detector = _Detector(1)
    character = await gateway.create_character(user)
    path = f"/api/v1/characters/{character['id']}/reference-photos"
    first = [image_bytes("PNG", (10 + i, 10)) for i in range(6)]
    assert (
        await gateway.client.post(path, files=_files(*first), headers=gateway.auth(user))
    ).status_code == 201
    more = [image_bytes("PNG", (30 + i, 10)) for i in range(3)]
    response = await gateway.client.post(path, files=_files(*more), headers=gateway.auth(user))
    assert response.status_code == 422
    assert "at most 8" in response.json()["detail"][0]["msg"]
    assert await _photo_rows(gateway, character["id"]) == 6
    assert len([k for k in gateway.blobs.objects if k.startswith("references/")]) == 6
    # The same bytes on the existing photo are refused without touching its object.
    again = await gateway.client.post(path, files=_files(first[0]), headers=gateway.auth(user))
    assert again.status_code == 422
    assert len([k for k in gateway.blobs.objects if k.startswith("references/")]) == 6


class _FailingStore(InMemoryBlobStore):
    """Accepts `allowed` puts, then fails like an unreachable S3."""

    def __init__(self, allowed: int) -> None:
        super().__init__()
        self.allowed = allowed

    async def put(
        self, key: str, data: bytes, content_type: str, *, cache_control: str | None = None
    ) -> None:
        if self.allowed <= 0:
            raise RetryableError("s3 unavailable")
        self.allowed -= 1
        await super().put(key, data, content_type, cache_control=cache_control)


async def test_a_storage_failure_half_way_leaves_no_rows_and_no_objects(
    gateway_db_url: str, user: str
) -> None:
    store = _FailingStore(allowed=2)
    async with custom_gateway(gateway_db_url, blobs=store) as gw:
        gw.app.state.face_detector = _Detector(1)
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"
        photos = [image_bytes("PNG", (10 + i, 10)) for i in range(4)]
        response = await gw.client.post(path, files=_files(*photos), headers=gw.auth(user))
        assert response.status_code == 503
        assert await _photo_rows(gw, character["id"]) == 0
        assert store.objects == {}
        store.allowed = 10
        response = await gw.client.post(path, files=_files(*photos), headers=gw.auth(user))
        assert response.status_code == 201
        assert await _photo_rows(gw, character["id"]) == 4
        assert len(store.objects) == 4


async def test_other_users_photos_are_404(gateway: Gateway, user: str) -> None:
    gateway.app.state.face_detector = _Detector(1)
    character = await gateway.create_character(user)
    path = f"/api/v1/characters/{character['id']}/reference-photos"
    response = await gateway.client.post(
        path, files=_files(image_bytes()), headers=gateway.auth(user)
    )
    photo_id = response.json()["items"][0]["id"]
    intruder = gateway.auth("intruder-" + user)
    assert (await gateway.client.get(path, headers=intruder)).status_code == 404
    assert (
        await gateway.client.post(path, files=_files(image_bytes("JPEG")), headers=intruder)
    ).status_code == 404
    assert (await gateway.client.delete(f"{path}/{photo_id}", headers=intruder)).status_code == 404
    assert await _photo_rows(gateway, character["id"]) == 1


def test_dlib_detector_finds_the_face_and_not_a_blank() -> None:
    detector = references.load_face_detector()
    if detector is None:
        pytest.skip("dlib is not installed")
    checked = references.check_photo(
        FACE_JPEG, 0, max_bytes=10**7, max_pixels=10**7, detector=detector, require_face=True
    )
    assert checked.faces == 1
    with pytest.raises(references.PhotoRefusedError, match="no face"):
        references.check_photo(
            image_bytes("JPEG", (400, 400)),
            3,
            max_bytes=10**7,
            max_pixels=10**7,
            detector=detector,
            require_face=True,
        )


def test_missing_dlib_means_no_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # what an uninstalled package looks like
    assert references.load_face_detector() is None


async def test_oversized_requests_are_refused_before_parsing(
    gateway_db_url: str, user: str
) -> None:
    async with custom_gateway(gateway_db_url, reference_max_bytes=1024, lora_max_bytes=1024) as gw:
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"
        big = b"\xff" * (9 * 1024 + 1024 * 1024)
        response = await gw.client.post(path, files=_files(big), headers=gw.auth(user))
        assert response.status_code == 413
        assert response.json()["detail"][0]["loc"] == ["body"]

        # A chunked body (no Content-Length) is counted as it arrives.
        async def chunks() -> Any:
            for _ in range(3):
                yield b"{" + b" " * (1024 * 1024)

        response = await gw.client.post(
            "/api/v1/characters",
            content=chunks(),
            headers={**gw.auth(user), "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        huge_json = {"name": "Mia", "description": "x" * (3 * 1024 * 1024)}
        response = await gw.client.post("/api/v1/characters", json=huge_json, headers=gw.auth(user))
        assert response.status_code == 413
        assert await _photo_rows(gw, character["id"]) == 0
