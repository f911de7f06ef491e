"""Issue 18, bug 7: messages that say what to do, and 422s that stay small."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from imagegen.cli import main
from imagegen.stack.demo import DEMO_CHARACTER, _demo_character
from tests.unit.gateway.conftest import Gateway


async def test_a_422_never_echoes_a_huge_input(gateway: Gateway, user: str) -> None:
    response = await gateway.client.post(
        "/api/v1/characters", json={"name": "x" * 100_000}, headers=gateway.auth(user)
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]
    assert len(response.content) < 2_000, len(response.content)
    assert "100000 characters" in response.json()["detail"][0]["input"]


async def test_the_webhook_422_for_a_local_http_receiver_names_the_setting(
    gateway: Gateway, user: str
) -> None:
    character = await gateway.create_character(user)
    body = {
        "character_id": character["id"],
        "image_count": 1,
        "webhook": {"url": "http://127.0.0.1:9000/hook", "secret": "s" * 32},
    }
    response = await gateway.client.post("/api/generate", json=body, headers=gateway.auth(user))
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert problem["loc"] == ["body", "webhook", "url"]
    assert "IMAGEGEN_WEBHOOK_ALLOWED_HOSTS" in problem["msg"]


def test_token_without_secrets_says_to_pass_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEGEN_JWT_SECRET", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["token", "--user", "u", "--data-dir", str(tmp_path / "elsewhere")])
    assert exited.value.code == 2
    assert "--data-dir" in capsys.readouterr().err


def test_the_demo_reuses_its_character() -> None:
    characters: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"items": characters, "nextCursor": None})
        made = {**json.loads(request.content), "id": f"c{len(characters)}", "seed": 1}
        characters.append(made)
        return httpx.Response(201, json=made)

    with httpx.Client(transport=httpx.MockTransport(handle), base_url="http://gw") as client:
        first, again = _demo_character(client), _demo_character(client)
    assert first["id"] == again["id"] == "c0" and len(characters) == 1
    assert first["name"] == DEMO_CHARACTER["name"]
