"""The idempotency middleware with large bodies: it hashes them as they stream while
spooling them (memory up to 1 MiB, then an unnamed temporary file), replays them to the
app from the spool, and closes the spool whatever happens.

The first tests run the whole gateway in-process (httpx's ASGI transport streams a
generator body chunk by chunk); the last ones drive the middleware alone against the
gateway's real PostgreSQL, with scripted server and app, for the paths a route cannot take
on demand (a client that leaves mid-body, an app that raises).
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import random
import tempfile
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from PIL import Image
from starlette.types import Message, Receive, Scope, Send

from services.gateway.idempotency import IdempotencyMiddleware, RequestDigest, request_hash
from tests.unit.gateway.conftest import Gateway
from tests.unit.gateway.resources_support import custom_gateway

CHUNK = 64 * 1024


class _Spools:
    """Every spool the idempotency middleware makes, to check they are closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
        made: list[tempfile.SpooledTemporaryFile[bytes]] = []
        self.made = made
        self.folder = tmp_path

        class Recorded(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(self)

        # raising=False: against a middleware that spools nothing, `made` stays empty and
        # the tests say so.
        monkeypatch.setattr(
            "services.gateway.idempotency.SpooledTemporaryFile", Recorded, raising=False
        )
        # Rolled-over spools are created here (and unlinked at once, so nothing may stay).
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def on_disk(self) -> list[bool]:
        return [not isinstance(f._file, io.BytesIO) for f in self.made]

    def assert_closed(self, count: int) -> None:
        assert len(self.made) == count
        assert all(f.closed for f in self.made)
        assert os.listdir(self.folder) == []


@pytest.fixture
def spools(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[_Spools]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield _Spools(monkeypatch, tmp_path)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def _part(boundary: str, name: str, content: bytes = b"") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; filename="{name}"'
        "\r\nContent-Type: image/png\r\n\r\n"
    ).encode() + content


async def _streamed(*pieces: bytes | tuple[bytes, int]) -> AsyncIterator[bytes]:
    """Bytes, or (byte, count) made CHUNK at a time: the client keeps none of the body."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
            continue
        fill, count = piece
        for start in range(0, count, CHUNK):
            yield fill * min(CHUNK, count - start)


async def _keys(gw: Gateway, user: str) -> list[tuple[str, str]]:
    rows = await gw.state.pool.fetch(
        "SELECT key, state FROM idempotency_keys WHERE user_id = $1", user
    )
    return [(r["key"], r["state"]) for r in rows]


async def test_a_large_upload_with_a_key_is_spooled_not_held(
    gateway_db_url: str, user: str, spools: _Spools
) -> None:
    # Three 5 MiB photos where two are allowed: the route refuses them (422, a response
    # that is kept) after FastAPI has parsed the form, without reading the photos itself,
    # so what the request costs is what the middlewares and the form parser hold.
    photo = 5 * 1024 * 1024
    async with custom_gateway(
        gateway_db_url, reference_max_bytes=8 * 1024 * 1024, reference_max_photos=2
    ) as gw:
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"

        def body(boundary: str, last: bytes = b"\x89") -> AsyncIterator[bytes]:
            parts: list[bytes | tuple[bytes, int]] = []
            for name in ("a", "b", "c"):
                parts += [_part(boundary, name), (b"\x89", photo), b"\r\n"]
            return _streamed(*parts[:-2], (last, photo), f"\r\n--{boundary}--\r\n".encode())

        def headers(boundary: str) -> dict[str, str]:
            content_type = f"multipart/form-data; boundary={boundary}"
            return {**gw.auth(user), "Content-Type": content_type, "Idempotency-Key": "big-1"}

        tracemalloc.start()
        try:
            first = await gw.client.post(
                path, content=body("b0undary"), headers=headers("b0undary")
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert first.status_code == 422, first.text
        assert first.json()["detail"][0]["msg"] == "send between 1 and 2 photos"
        # Before: the middleware held the 15 MiB body as chunks, then joined it, then
        # copied it without its boundary to hash it (peak 52.7 MB measured; spooled, 1.5 MB,
        # the form parser's spools included).
        assert peak < 3 * 1024 * 1024, f"peak {peak} bytes for a {3 * photo}-byte body"
        assert await _keys(gw, user) == [("big-1", "done")]

        # The same upload again (another boundary, as a client library picks anew): the
        # stored answer, without a second run of the route.
        again = await gw.client.post(path, content=body("other"), headers=headers("other"))
        assert again.status_code == 422
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"

        # One byte different in the last photo: refused, naming the header.
        other = await gw.client.post(
            path, content=body("b0undary", last=b"\x8a"), headers=headers("b0undary")
        )
        assert other.status_code == 422
        assert other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        assert other.json()["detail"][0]["type"] == "idempotency_mismatch"

    spools.assert_closed(3)
    assert spools.on_disk() == [True, True, True]


async def test_an_upload_spooled_to_disk_reaches_the_route_whole_and_replays(
    gateway_db_url: str, user: str, spools: _Spools
) -> None:
    noise = random.Random(7).randbytes(900 * 900 * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (900, 900), noise).save(buffer, format="PNG")
    photo = buffer.getvalue()
    assert len(photo) > 2 * 1024 * 1024  # past the spool's memory, onto disk
    async with custom_gateway(gateway_db_url, reference_max_photos=2) as gw:
        gw.app.state.face_detector = None
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"

        async def post(boundary: str, content: bytes, step: int) -> Any:
            body = _part(boundary, "a.png", content) + f"\r\n--{boundary}--\r\n".encode()

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(body), step):
                    yield body[start : start + step]

            content_type = f"multipart/form-data; boundary={boundary}"
            headers = {**gw.auth(user), "Content-Type": content_type, "Idempotency-Key": "k"}
            return await gw.client.post(path, content=chunks(), headers=headers)

        first = await post("b0undary", photo, 50_000)
        assert first.status_code == 201, first.text
        [stored] = [v[0] for k, v in gw.blobs.objects.items() if k.startswith("references/")]
        assert stored == photo  # replayed from disk to the route byte for byte

        # Another boundary and other chunk sizes (one splitting the boundary): same request.
        again = await post("zz-other", photo, 7_777)
        assert again.status_code == 201
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"

        changed = await post("b0undary", photo[:-1] + b"\x00", 50_000)
        assert changed.status_code == 422
        assert changed.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        count = await gw.state.pool.fetchval(
            "SELECT count(*) FROM reference_photos WHERE character_id = $1", character["id"]
        )
        assert count == 1

    spools.assert_closed(3)
    assert spools.on_disk() == [True, True, True]


async def test_an_upload_cut_by_the_body_limit_claims_nothing_and_closes_its_spool(
    gateway_db_url: str, user: str, spools: _Spools
) -> None:
    async with custom_gateway(
        gateway_db_url, reference_max_bytes=1024 * 1024, reference_max_photos=1
    ) as gw:
        character = await gw.create_character(user)
        path = f"/api/v1/characters/{character['id']}/reference-photos"
        headers = {
            **gw.auth(user),
            "Content-Type": "multipart/form-data; boundary=b0undary",
            "Idempotency-Key": "cut-1",
        }
        body = _streamed(_part("b0undary", "a"), (b"\x89", 4 * 1024 * 1024))
        response = await gw.client.post(path, content=body, headers=headers)
        assert response.status_code == 413, response.text
        assert await _keys(gw, user) == []
    spools.assert_closed(1)
    assert spools.on_disk() == [True]  # the 2 MiB limit is past the spool's memory


# --- the hash, as the body streams ------------------------------------------------------


def _expected(method: str, path: str, ctype: str, body: bytes, boundary: bytes = b"") -> str:
    """The whole-body hash as first defined: keys claimed before still match."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), b"q=1", ctype.encode()):
        digest.update(part + b"\x00")
    digest.update(body.replace(boundary, b"") if boundary else body)
    return digest.hexdigest()


def _chunked(body: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 40))))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


@pytest.mark.parametrize(
    ("boundary", "body"),
    [
        (b"b0undary", b"--b0undary\r\nhead\r\n\r\nDATA b0undar b0undaryb0undary\r\n--b0undary--"),
        # Repeats and near-misses: bytes.replace removes leftmost, non-overlapping matches.
        (b"aa", b"aaaaabaaaabaaa" * 5),
        (b"aba", b"abababa-ababa" * 7),
        (b"x", b"xyxxyyxxx"),
        (b"nothere", b"a body without it at all"),
    ],
)
def test_a_multipart_hash_streamed_in_any_chunks_equals_the_whole_body_hash(
    boundary: bytes, body: bytes
) -> None:
    ctype = f"multipart/form-data; boundary={boundary.decode()}"
    expected = _expected("POST", "/p", "multipart/form-data", body, boundary)
    assert request_hash("POST", "/p", b"q=1", ctype, body) == expected
    rng = random.Random(boundary)
    for _ in range(50):
        digest = RequestDigest("POST", "/p", b"q=1", ctype)
        for chunk in _chunked(body, rng):
            digest.update(chunk)
        assert digest.hexdigest() == expected


def test_json_and_other_bodies_hash_the_same_streamed() -> None:
    for ctype, body, canonical in [
        ("application/json", b'{ "b": 1,\n "a" : [1, 2] }', b'{"a":[1,2],"b":1}'),
        ("application/json", b"{not json", b"{not json"),  # hashed as it is
        ("text/plain", b"plain " * 100, b"plain " * 100),
    ]:
        expected = _expected("POST", "/p", ctype, canonical)
        digest = RequestDigest("POST", "/p", b"q=1", ctype)
        for chunk in _chunked(body, random.Random(1)):
            digest.update(chunk)
        assert digest.hexdigest() == expected == request_hash("POST", "/p", b"q=1", ctype, body)


# --- the middleware alone, against the gateway's PostgreSQL --------------------------------


class _Server:
    """Hands out `chunks` (then a disconnect, or one in their place if `leaves`) and records
    what it is sent."""

    def __init__(self, chunks: list[bytes], leaves: bool = False) -> None:
        self.messages: list[Message] = [
            {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
            for i, c in enumerate(chunks)
        ]
        if leaves:
            self.messages[-1] = {"type": "http.disconnect"}
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return self.messages.pop(0) if self.messages else {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def answer(self) -> tuple[int, dict[bytes, bytes], bytes]:
        [start, body] = self.sent
        return start["status"], dict(start["headers"]), body["body"]


class _App:
    """Reads the body (unless `read` is False), then answers 201 with its length and sha256,
    or raises."""

    def __init__(self, read: bool = True, fail: bool = False) -> None:
        self.read, self.fail = read, fail
        self.calls = 0
        self.messages: list[tuple[int, bool]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        digest, size, more = hashlib.sha256(), 0, self.read
        while more:
            message = await receive()
            assert message["type"] == "http.request"
            digest.update(message["body"])
            size += len(message["body"])
            more = message["more_body"]
            self.messages.append((len(message["body"]), more))
        if self.fail:
            raise RuntimeError("the route broke")
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _drive(gw: Gateway, user: str, app: _App, server: _Server, key: str) -> None:
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"authorization", f"Bearer {gw.token(user)}".encode()),
        (b"idempotency-key", key.encode()),
    ]
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "query_string": b"",
        "headers": headers,
        "app": gw.app,
    }
    await IdempotencyMiddleware(app)(scope, server.receive, server.send)


async def test_the_spool_is_closed_on_every_path(
    gateway_db_url: str, user: str, spools: _Spools
) -> None:
    chunks = [os.urandom(100_000) for _ in range(30)]  # 3 MB, onto disk
    body = b"".join(chunks)
    async with custom_gateway(gateway_db_url) as gw:
        # Done: the app gets the body whole, in chunks, from the spool.
        app, server = _App(), _Server(chunks)
        await _drive(gw, user, app, server, "k1")
        status, _, answer = server.answer()
        assert (status, json.loads(answer)) == (
            201,
            {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()},
        )
        assert len(app.messages) > 1 and max(n for n, _ in app.messages) <= CHUNK
        assert [more for _, more in app.messages] == [True] * (len(app.messages) - 1) + [False]
        spools.assert_closed(1)

        # Replayed, and refused for another body: the app is not called.
        app, server = _App(), _Server(chunks)
        await _drive(gw, user, app, server, "k1")
        status, headers, replayed = server.answer()
        assert (status, replayed, headers[b"idempotent-replayed"]) == (201, answer, b"true")
        app, server = _App(), _Server([*chunks[:-1], b"other"])
        await _drive(gw, user, app, server, "k1")
        assert server.answer()[0] == 422
        assert app.calls == 0
        spools.assert_closed(3)

        # The client leaves mid-body: nothing claimed, nothing sent.
        app, server = _App(), _Server(chunks, leaves=True)
        await _drive(gw, user, app, server, "k2")
        assert (app.calls, server.sent) == (0, [])
        spools.assert_closed(4)

        # The app raises: the claim is released, the error goes on.
        app, server = _App(fail=True), _Server(chunks)
        with pytest.raises(RuntimeError, match="the route broke"):
            await _drive(gw, user, app, server, "k3")
        spools.assert_closed(5)

        # The app answers without reading the body.
        app, server = _App(read=False), _Server(chunks)
        await _drive(gw, user, app, server, "k4")
        assert json.loads(server.answer()[2])["size"] == 0
        spools.assert_closed(6)

        # An empty body is one empty message.
        app, server = _App(), _Server([b""])
        await _drive(gw, user, app, server, "k5")
        assert app.messages == [(0, False)]
        spools.assert_closed(7)

        # k3's claim was released: it stays as an abandoned claim (for its job id), which
        # the next request with the key takes over at once.
        assert sorted(await _keys(gw, user)) == [
            ("k1", "done"),
            ("k3", "pending"),
            ("k4", "done"),
            ("k5", "done"),
        ]
    assert spools.on_disk() == [True] * 6 + [False]
