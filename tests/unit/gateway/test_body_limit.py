"""BodyLimitMiddleware: bodies flow on as they arrive and are cut off past the limit.

The first tests drive the middleware alone with a scripted server, so they can see what
it reads from the server and hands to the app, message by message. The last ones run the
whole gateway in-process (httpx's ASGI transport streams a generator body chunk by chunk,
as a chunked upload arrives) and measure what the refused upload costs.
"""

from __future__ import annotations

import json
import logging
import tempfile
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive, Scope, Send

from services.gateway.auth import Authenticator, issue_token
from services.gateway.wiring import MAX_JSON_BYTES, BodyLimitMiddleware
from tests.unit.gateway.conftest import gateway_settings
from tests.unit.gateway.resources_support import custom_gateway, image_bytes

SETTINGS = gateway_settings("postgresql://unused/never-connected")
FRESH = "<fresh token>"
"""`_scope`'s default: a token issued when the scope is built (one issued at import
expires before a long test run reaches these tests)."""
MULTIPART = "multipart/form-data; boundary=b0undary"


class _Server:
    """The server's side of one request: hands out `chunks` and records what it is sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.reads = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.reads += 1
        if self.reads > len(self.chunks):
            return {"type": "http.disconnect"}
        more = self.reads < len(self.chunks)
        return {"type": "http.request", "body": self.chunks[self.reads - 1], "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def answer(self) -> tuple[int, Any]:
        [start, body] = self.sent
        assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
        payload = json.loads(body["body"]) if body["body"] else None
        return start["status"], payload


class _Reader:
    """An app that reads the body message by message, noting how many server reads each
    took, then answers 200 (or the 400 FastAPI gives a body that ended early)."""

    def __init__(self, server: _Server, answer_first: bool = False) -> None:
        self.server = server
        self.answer_first = answer_first
        self.seen: list[tuple[str, int, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        status = 200
        while True:
            message = await receive()
            self.seen.append((message["type"], len(message.get("body", b"")), self.server.reads))
            if message["type"] == "http.disconnect":
                status = 400
                break
            if not message.get("more_body", False):
                break
        if not self.answer_first:
            await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _scope(content_type: str, token: str | None = FRESH, length: int | None = None) -> Scope:
    if token == FRESH:
        token = issue_token(SETTINGS.jwt_secret, "body-limit-user", "paid", 600)
    headers = [(b"content-type", content_type.encode())]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    app = SimpleNamespace(state=SimpleNamespace(authenticator=Authenticator(SETTINGS)))
    return {"type": "http", "method": "POST", "path": "/x", "headers": headers, "app": app}


def _assert_too_large(server: _Server, limit: int) -> None:
    status, payload = server.answer()
    assert status == 413
    assert payload == {
        "detail": [
            {"loc": ["body"], "msg": f"request body larger than {limit} bytes", "type": "too_large"}
        ]
    }


async def test_chunks_reach_the_app_as_they_arrive() -> None:
    # The app gets chunk i right after the server handed it over, not once the whole body
    # is in: whatever the body's size, the middleware holds one chunk at a time.
    server = _Server([bytes([i]) * 1000 for i in range(8)])
    app = _Reader(server)
    await BodyLimitMiddleware(app, upload_bytes=10_000)(
        _scope(MULTIPART), server.receive, server.send
    )
    assert app.seen == [("http.request", 1000, i + 1) for i in range(8)]
    assert server.answer() == (200, None)


@pytest.mark.parametrize(
    ("content_type", "limit", "chunk"),
    [(MULTIPART, 4500, 1000), ("application/json", MAX_JSON_BYTES, 64 * 1024)],
)
async def test_past_the_limit_the_client_gets_413_and_the_app_sees_it_leave(
    content_type: str, limit: int, chunk: int
) -> None:
    server = _Server([b"x" * chunk] * (limit // chunk + 20))
    app = _Reader(server)
    await BodyLimitMiddleware(app, upload_bytes=4500)(
        _scope(content_type), server.receive, server.send
    )
    _assert_too_large(server, limit)  # and the app's own 400 never reached the client
    within = limit // chunk
    assert app.seen == [
        *(("http.request", chunk, i + 1) for i in range(within)),
        ("http.disconnect", 0, within + 1),
    ]
    # Nothing past the chunk that crossed the limit was read from the server.
    assert server.reads == within + 1


async def test_every_read_after_the_cut_is_a_disconnect() -> None:
    server = _Server([b"x" * 100] * 10)
    messages: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        for _ in range(5):
            messages.append(await receive())

    await BodyLimitMiddleware(app, upload_bytes=150)(_scope(MULTIPART), server.receive, server.send)
    assert [m["type"] for m in messages] == ["http.request"] + ["http.disconnect"] * 4
    assert server.reads == 2
    _assert_too_large(server, 150)


async def test_a_declared_length_does_not_frame_the_body() -> None:
    # A server that passed on more than the declared 10 bytes still meets the limit.
    server = _Server([b"x" * 1000] * 10)
    app = _Reader(server)
    scope = _scope(MULTIPART, length=10)
    await BodyLimitMiddleware(app, upload_bytes=4500)(scope, server.receive, server.send)
    _assert_too_large(server, 4500)
    assert server.reads == 5


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    server = _Server([b"x" * 1000] * 10)
    app = _Reader(server)
    scope = _scope(MULTIPART, length=4501)
    await BodyLimitMiddleware(app, upload_bytes=4500)(scope, server.receive, server.send)
    _assert_too_large(server, 4500)
    assert (server.reads, app.seen) == (0, [])


async def test_a_response_already_started_goes_on() -> None:
    server = _Server([b"x" * 1000] * 10)
    app = _Reader(server, answer_first=True)
    await BodyLimitMiddleware(app, upload_bytes=4500)(
        _scope(MULTIPART), server.receive, server.send
    )
    assert server.answer() == (200, None)
    assert app.seen[-1] == ("http.disconnect", 0, 5)


async def test_a_client_disconnect_the_cut_caused_is_not_an_error() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()  # raises ClientDisconnect

    server = _Server([b"x" * 1000] * 10)
    await BodyLimitMiddleware(app, upload_bytes=4500)(
        _scope(MULTIPART), server.receive, server.send
    )
    _assert_too_large(server, 4500)

    # A client that really left is the app's business, as before.
    server = _Server([])
    with pytest.raises(ClientDisconnect):
        await BodyLimitMiddleware(app, upload_bytes=4500)(
            _scope(MULTIPART), server.receive, server.send
        )


@pytest.mark.parametrize("token", [None, "not-a-token", "a.b.c"])
async def test_multipart_with_a_bad_token_is_refused_before_one_byte_is_read(
    token: str | None,
) -> None:
    server = _Server([b"x" * 1000] * 10)
    app = _Reader(server)
    await BodyLimitMiddleware(app, upload_bytes=4500)(
        _scope(MULTIPART, token=token), server.receive, server.send
    )
    status, payload = server.answer()
    assert status == 401
    assert "token" in payload["detail"]
    headers = dict(server.sent[0]["headers"])
    assert headers[b"www-authenticate"] == b'Bearer error="invalid_token"'
    assert (server.reads, app.seen) == (0, [])


# --- the whole gateway, in-process ---------------------------------------------------------


class _SpooledFiles:
    """Every spooled file Starlette's multipart parser makes, to check they are closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        made: list[tempfile.SpooledTemporaryFile[bytes]] = []
        self.made = made

        class Recorded(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

        monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", Recorded)


def _file_part(name: str, head: bytes = b"") -> bytes:
    return (
        b'--b0undary\r\nContent-Disposition: form-data; name="photos"; filename="'
        + name.encode()
        + b'"\r\nContent-Type: image/png\r\n\r\n'
        + head
    )


async def test_a_refused_chunked_upload_costs_one_chunk_not_the_body(
    gateway_db_url: str,
    user: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_bytes = 8 * 1024 * 1024
    limit = 2 * max_bytes + 1024 * 1024
    chunk, total = 64 * 1024, 32 * 1024 * 1024
    files = _SpooledFiles(monkeypatch)
    async with custom_gateway(
        gateway_db_url, reference_max_bytes=max_bytes, reference_max_photos=2
    ) as gw:
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"
        sent = 0

        def pieces() -> Iterator[bytes]:
            # A whole first photo (3 MB: spooled past memory onto disk), then one that
            # never ends; each chunk made as it is sent, none kept by the client.
            yield _file_part("a.png")
            for _ in range(48):
                yield b"\x89" * chunk
            yield b"\r\n" + _file_part("b.png")
            while True:
                yield b"\x89" * chunk

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            for piece in pieces():
                if sent >= total:
                    return
                sent += len(piece)
                yield piece

        caplog.set_level(logging.WARNING)
        tracemalloc.start()
        try:
            response = await gw.client.post(
                path, content=body(), headers={**gw.auth(user), "Content-Type": MULTIPART}
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 413, response.text
        assert response.json()["detail"] == [
            {"loc": ["body"], "msg": f"request body larger than {limit} bytes", "type": "too_large"}
        ]
        # The old middleware held the body up to the limit (17 MB here) before refusing it.
        assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while refusing a {limit}-byte limit"
        assert limit < sent < limit + 2 * chunk, "the client was read past the crossing chunk"
        assert len(files.made) == 2 and all(f.closed for f in files.made)
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
        count = await gw.state.pool.fetchval(
            "SELECT count(*) FROM reference_photos WHERE character_id = $1", character["id"]
        )
        assert count == 0
        assert not [k for k in gw.blobs.objects if k.startswith(f"references/{user}/")]


async def test_a_chunked_upload_under_the_limit_is_stored(gateway_db_url: str, user: str) -> None:
    async with custom_gateway(gateway_db_url, reference_max_photos=2) as gw:
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"
        photos = [image_bytes("PNG", (300, 200)), image_bytes("JPEG", (64, 64), "blue")]
        multipart = (
            _file_part("a.png", photos[0]) + b"\r\n" + _file_part("b.jpg", photos[1]) + b"\r\n"
        ) + b"--b0undary--\r\n"

        async def body() -> AsyncIterator[bytes]:
            for start in range(0, len(multipart), 1000):
                yield multipart[start : start + 1000]

        gw.app.state.face_detector = None
        response = await gw.client.post(
            path, content=body(), headers={**gw.auth(user), "Content-Type": MULTIPART}
        )
        assert response.status_code == 201, response.text
        items = response.json()["items"]
        assert [(p["contentType"], p["width"]) for p in items] == [
            ("image/png", 300),
            ("image/jpeg", 64),
        ]
        stored = {k: v[0] for k, v in gw.blobs.objects.items() if k.startswith("references/")}
        assert sorted(p for k, p in stored.items() if f"/{character['id']}/" in k) == sorted(photos)


async def test_a_chunked_json_body_over_the_limit_is_refused(
    gateway_db_url: str, user: str
) -> None:
    async with custom_gateway(gateway_db_url) as gw:
        chunk = 256 * 1024

        async def body() -> AsyncIterator[bytes]:
            yield b'{"name": "Mia", "description": "'
            for _ in range(MAX_JSON_BYTES // chunk + 4):
                yield b"x" * chunk
            yield b'"}'

        response = await gw.client.post(
            "/api/v1/characters",
            content=body(),
            headers={**gw.auth(user), "Content-Type": "application/json"},
        )
        assert response.status_code == 413, response.text
        [problem] = response.json()["detail"]
        assert problem["msg"] == f"request body larger than {MAX_JSON_BYTES} bytes"
        listed = await gw.client.get("/api/v1/characters", headers=gw.auth(user))
        assert listed.json()["items"] == []


async def test_a_refused_upload_leaves_its_idempotency_key_free(
    gateway_db_url: str, user: str
) -> None:
    # The idempotency middleware reads the body before it claims the key: cut off, it
    # claims nothing, so the key still works for the retry that fits.
    async with custom_gateway(
        gateway_db_url, reference_max_bytes=64 * 1024, reference_max_photos=2
    ) as gw:
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"
        headers = {**gw.auth(user), "Content-Type": MULTIPART, "Idempotency-Key": "retry-1"}

        async def endless() -> AsyncIterator[bytes]:
            yield _file_part("a.png")
            for _ in range(40):
                yield b"\x89" * (64 * 1024)

        response = await gw.client.post(path, content=endless(), headers=headers)
        assert response.status_code == 413, response.text
        keys = await gw.state.pool.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE user_id = $1", user
        )
        assert keys == 0

        gw.app.state.face_detector = None
        photo = image_bytes("PNG", (32, 32))
        response = await gw.client.post(
            path, content=_file_part("a.png", photo) + b"\r\n--b0undary--\r\n", headers=headers
        )
        assert response.status_code == 201, response.text
