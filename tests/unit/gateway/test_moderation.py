from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.gateway.moderation import (
    ModerationUnavailableError,
    Moderator,
    OpenAIModerationPolicy,
    WordListPolicy,
    texts_of,
)
from tests.unit.gateway.resources_support import custom_gateway

_CATEGORIES = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
]


class FakeModerationEndpoint:
    """Imitates POST /v1/moderations: flags any input containing 'dragonfire' as violence."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
                )
                payload: dict[str, Any]
                if outer.fail:
                    self.send_response(400)
                    payload = {"error": {"message": "bad", "type": "invalid_request_error"}}
                else:
                    self.send_response(200)
                    inputs = body["input"]
                    payload = {
                        "id": "modr-1",
                        "model": body.get("model"),
                        "results": [outer._result(text) for text in inputs],
                    }
                data = json.dumps(payload).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @staticmethod
    def _result(text: str) -> dict[str, Any]:
        hit = "dragonfire" in text
        categories = {name: (hit and name == "violence") for name in _CATEGORIES}
        return {
            "flagged": hit,
            "categories": categories,
            "category_scores": {name: (0.9 if on else 0.01) for name, on in categories.items()},
            "category_applied_input_types": {name: ["text"] for name in _CATEGORIES},
        }


@pytest.fixture
def endpoint() -> Iterator[FakeModerationEndpoint]:
    fake = FakeModerationEndpoint()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


async def test_word_list_matches_whole_words_case_and_punctuation_insensitively() -> None:
    policy = WordListPolicy(extra_terms=["Blue Moon"])
    assert await policy.check({("body", "a"): "a brave knight on a horse"}) is None
    assert await policy.check({("body", "a"): "Scunthorpe gorella nudel"}) is None
    flag = await policy.check({("body", "a"): "fine", ("body", "b"): "a GORY scene!"})
    assert flag is not None
    assert (flag.loc, flag.category) == (("body", "b"), "violence/graphic")
    flag = await policy.check({("x",): "N.U.D.E portrait"})
    assert flag is not None and flag.category == "sexual"
    flag = await policy.check({("x",): "under a blue   moon"})
    assert flag is not None and flag.category == "custom"


async def test_texts_of_names_every_string() -> None:
    texts = texts_of({"name": "A", "attributes": {"features": ["b", "c"]}, "n": 3}, ("body",))
    assert texts == {
        ("body", "name"): "A",
        ("body", "attributes", "features", 0): "b",
        ("body", "attributes", "features", 1): "c",
    }


async def test_openai_policy_flags_the_right_field(endpoint: FakeModerationEndpoint) -> None:
    policy = OpenAIModerationPolicy(
        "sk-test", base_url=endpoint.base_url, model="omni-moderation-latest", timeout_s=5
    )
    try:
        assert await policy.check({("body", "name"): "Mia", ("body", "d"): "kind"}) is None
        flag = await policy.check({("body", "name"): "Mia", ("body", "d"): "breathes dragonfire"})
        assert flag is not None
        assert (flag.loc, flag.category) == (("body", "d"), "violence")
        request = endpoint.requests[-1]
        assert request["path"] == "/v1/moderations"
        assert request["body"]["input"] == ["Mia", "breathes dragonfire"]
        assert request["auth"] == "Bearer sk-test"
        endpoint.fail = True
        with pytest.raises(ModerationUnavailableError):
            await policy.check({("body", "name"): "Mia"})
    finally:
        await policy.aclose()


async def test_moderator_refuses_overlong_text_before_any_policy() -> None:
    moderator = Moderator([])
    flag = await moderator.check({("body", "prompt"): "x" * 20_000, ("body", "e"): None})
    assert flag is not None and flag.category == "too_long"


async def test_character_refused_by_builtin_list_names_field_and_category(
    gateway_db_url: str, user: str
) -> None:
    async with custom_gateway(gateway_db_url, moderation_extra_terms=["zorblax"]) as gw:
        cases = [
            (
                {"name": "Mia", "description": "covered in gore"},
                ["body", "description"],
                "violence/graphic",
            ),
            (
                {"name": "Mia", "styleModifiers": ["soft", "nsfw"]},
                ["body", "styleModifiers", 1],
                "sexual",
            ),
            (
                {"name": "Mia", "attributes": {"outfit": "zorblax armour"}},
                ["body", "attributes", "outfit"],
                "custom",
            ),
        ]
        for body, loc, category in cases:
            response = await gw.client.post("/api/v1/characters", json=body, headers=gw.auth(user))
            assert response.status_code == 422, body
            problem = response.json()["detail"][0]
            assert problem["loc"] == loc
            assert (problem["type"], problem["category"]) == ("moderation", category)
            assert category in problem["msg"]
        created = await gw.create_character(user)
        response = await gw.client.patch(
            f"/api/v1/characters/{created['id']}",
            json={"name": "naked Mia"},
            headers=gw.auth(user),
        )
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "name"]
        listed = await gw.client.get("/api/v1/characters", headers=gw.auth(user))
        assert [c["name"] for c in listed.json()["items"]] == ["Mia"]


async def test_openai_endpoint_is_used_when_a_key_is_configured(
    gateway_db_url: str, user: str, endpoint: FakeModerationEndpoint
) -> None:
    async with custom_gateway(
        gateway_db_url, openai_api_key="sk-test", openai_base_url=endpoint.base_url
    ) as gw:
        response = await gw.client.post(
            "/api/v1/characters",
            json={"name": "Mia", "description": "breathes dragonfire"},
            headers=gw.auth(user),
        )
        assert response.status_code == 422
        problem = response.json()["detail"][0]
        assert (problem["loc"], problem["category"]) == (["body", "description"], "violence")
        endpoint.fail = True
        response = await gw.client.post(
            "/api/v1/characters", json={"name": "Mia"}, headers=gw.auth(user)
        )
        assert response.status_code == 503  # fail closed: nothing unmoderated is saved
        listed = await gw.client.get("/api/v1/characters", headers=gw.auth(user))
        assert listed.json()["items"] == []
