"""A character's LoRA: uploaded or fetched once from an https URL, checked, stored, and
carried in every request for the character (real PostgreSQL, in-memory S3)."""

from __future__ import annotations

import hashlib
import json
import struct

import httpx
import pytest

from schemas.requests import REQUEST_ADAPTER, GenerateImages
from services.gateway import loras
from tests.unit.gateway.conftest import Gateway


def safetensors(names: tuple[str, ...] = ("unet.down.lora_A.weight",), size: int = 16) -> bytes:
    """A well-formed safetensors file of float32 tensors with these names."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        header[name] = {
            "dtype": "F32",
            "shape": [size // 4],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


LORA = safetensors(("unet.attn.to_q.lora_A.weight", "unet.attn.to_q.lora_B.weight"))


def _file(data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("mira.safetensors", data, "application/octet-stream")}


def _serving(body: bytes, status: int = 200) -> httpx.MockTransport:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(status, content=body)

    transport = httpx.MockTransport(handle)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


async def test_upload_sets_the_lora_and_every_request_carries_it(
    gateway: Gateway, user: str
) -> None:
    character = await gateway.create_character(user)
    assert character["lora"] is None
    url = f"/api/v1/characters/{character['id']}/lora"
    response = await gateway.client.put(
        url,
        files=_file(LORA),
        data={"trigger_word": "ohwx mira", "weight": "0.7"},  # snake_case accepted too
        headers=gateway.auth(user),
    )
    assert response.status_code == 200, response.text
    sha256 = hashlib.sha256(LORA).hexdigest()
    assert response.json()["lora"] == {
        "triggerWord": "ohwx mira",
        "weight": 0.7,
        "sha256": sha256,
        "sizeBytes": len(LORA),
        "sourceUrl": None,
    }
    key = f"loras/{user}/{character['id']}/{sha256}.safetensors"
    assert await gateway.blobs.get(key) == LORA

    generated = await gateway.client.post(
        "/api/generate",
        json={"character_id": character["id"], "image_count": 1},
        headers=gateway.auth(user),
    )
    assert generated.status_code == 202, generated.text
    command = REQUEST_ADAPTER.validate_json(
        gateway.broker.records(gateway.topics.requests)[-1].value
    )
    assert isinstance(command, GenerateImages)
    lora = command.character.lora
    assert lora is not None
    assert (lora.key, lora.sha256, lora.trigger_word, lora.weight) == (
        key,
        sha256,
        "ohwx mira",
        0.7,
    )

    # A trigger word or weight alone edits it; null removes it; DELETE too.
    patched = await gateway.client.patch(
        f"/api/v1/characters/{character['id']}",
        json={"loraWeight": 1.2},
        headers=gateway.auth(user),
    )
    assert patched.json()["lora"]["weight"] == 1.2
    assert patched.json()["lora"]["triggerWord"] == "ohwx mira"
    removed = await gateway.client.patch(
        f"/api/v1/characters/{character['id']}",
        json={"lora_model_url": None},
        headers=gateway.auth(user),
    )
    assert removed.json()["lora"] is None
    assert (await gateway.client.delete(url, headers=gateway.auth(user))).status_code == 204


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 422, "the file is empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, 422, "not a safetensors file"),
        (safetensors(("text_model.embeddings.weight",)), 422, "holds no LoRA weights"),
        (LORA[:-8], 422, "out of it"),
    ],
)
async def test_bad_files_are_refused_by_name_and_change_nothing(
    gateway: Gateway, user: str, data: bytes, status: int, message: str
) -> None:
    character = await gateway.create_character(user)
    response = await gateway.client.put(
        f"/api/v1/characters/{character['id']}/lora",
        files=_file(data),
        headers=gateway.auth(user),
    )
    assert response.status_code == status, response.text
    assert message in response.text and "file" in response.text
    fetched = await gateway.client.get(
        f"/api/v1/characters/{character['id']}", headers=gateway.auth(user)
    )
    assert fetched.json()["lora"] is None
    assert not [k for k in gateway.blobs.objects if k.startswith("loras/")]


def test_a_file_over_the_size_limit_is_a_413() -> None:
    with pytest.raises(loras.LoraRefusedError, match="larger than 1024 bytes") as caught:
        loras.check_lora(safetensors(size=2048), max_bytes=1024)
    assert caught.value.status_code == 413


async def test_a_lora_url_is_fetched_once_at_creation(gateway: Gateway, user: str) -> None:
    served = _serving(LORA)
    gateway.app.state.lora_transport = served
    url = "https://loras.example/mira.safetensors"
    character = await gateway.create_character(
        user, loraModelUrl=url, lora_trigger_word="ohwx", loraWeight=0.9
    )
    lora = character["lora"]
    assert isinstance(lora, dict) and lora["sourceUrl"] == url
    assert (lora["triggerWord"], lora["weight"]) == ("ohwx", 0.9)
    assert served.seen == [url]  # type: ignore[attr-defined]
    sha256 = hashlib.sha256(LORA).hexdigest()
    assert await gateway.blobs.get(f"loras/{user}/{character['id']}/{sha256}.safetensors") == LORA


@pytest.mark.parametrize(
    ("url", "transport", "message"),
    [
        ("http://loras.example/a.safetensors", _serving(LORA), "must be an absolute https://"),
        ("https://u:p@loras.example/a", _serving(LORA), "may not carry credentials"),
        ("https://loras.example/missing", _serving(b"", 404), "answered HTTP 404"),
        ("https://loras.example/page", _serving(b"<html>hi</html>"), "not a safetensors file"),
    ],
)
async def test_bad_lora_urls_are_refused_by_name_and_create_nothing(
    gateway: Gateway, user: str, url: str, transport: httpx.MockTransport, message: str
) -> None:
    gateway.app.state.lora_transport = transport
    response = await gateway.client.post(
        "/api/v1/characters",
        json={"name": "Mia", "lora_model_url": url},
        headers=gateway.auth(user),
    )
    assert response.status_code == 422, response.text
    assert message in response.text and "loraModelUrl" in response.text
    listed = await gateway.client.get("/api/v1/characters", headers=gateway.auth(user))
    assert listed.json()["items"] == []


async def test_a_trigger_word_without_a_lora_is_refused(gateway: Gateway, user: str) -> None:
    response = await gateway.client.post(
        "/api/v1/characters",
        json={"name": "Mia", "loraTriggerWord": "ohwx"},
        headers=gateway.auth(user),
    )
    assert response.status_code == 422 and "loraModelUrl" in response.text
    character = await gateway.create_character(user)
    patched = await gateway.client.patch(
        f"/api/v1/characters/{character['id']}",
        json={"lora_trigger_word": "ohwx"},
        headers=gateway.auth(user),
    )
    assert patched.status_code == 422 and "has no LoRA" in patched.text


async def test_a_scene_of_more_than_four_characters_is_a_422_naming_the_limit(
    gateway: Gateway, user: str
) -> None:
    cast = [str((await gateway.create_character(user))["id"]) for _ in range(5)]
    response = await gateway.client.post(
        "/api/v1/images/scenes",
        json={"storyId": "any", "pageNumber": 1, "characterIds": cast, "style": "anime"},
        headers=gateway.auth(user),
    )
    assert response.status_code == 422, response.text
    assert "characterIds" in response.text and "at most 4" in response.text
    assert gateway.broker.records(gateway.topics.requests) == []
