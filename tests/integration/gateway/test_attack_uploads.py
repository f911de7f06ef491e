"""Hostile reference-photo uploads against a real server: uvicorn over loopback HTTP, real
PostgreSQL and SeaweedFS (the in-memory broker; nothing here publishes).

Every refusal is a 4xx whose `loc` names the photo and whose message names the problem,
and after all of them the character has no photo row and the bucket no object under the
user's prefix. Oversized bodies are refused from their headers, or as the bytes arrive,
never after the server has taken them all.

The type of a photo is sniffed from its bytes: a real JPEG sent as `x.png` with
`image/png` is stored as the JPEG it is (key `.jpg`, content type `image/jpeg`), so a
lying name or type can neither smuggle a non-image in nor mislabel what is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import select
import socket
import struct
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from PIL import Image
from pydantic import SecretStr
from uvicorn.config import HTTPProtocolType

from imagegen.blobstore import S3BlobStore
from imagegen.kafka.memory import InMemoryBroker
from imagegen.settings import S3Settings
from imagegen.stack.postgres import drop_database, ensure_database
from services.gateway.app import create_app
from services.gateway.auth import issue_token
from services.gateway.settings import GatewaySettings
from services.gateway.wiring import MAX_JSON_BYTES
from tests.fixtures.servers import S3Info
from tests.integration.gateway.live import serve
from tests.unit.gateway.conftest import gateway_settings
from tests.unit.gateway.resources_support import image_bytes

pytestmark = pytest.mark.integration

MAX_PHOTO = 256 * 1024
MAX_PHOTOS = 2
BODY_LIMIT = MAX_PHOTOS * MAX_PHOTO + 1024 * 1024  # what the gateway derives from the two


class _OneFace:
    def count(self, image: Any) -> int:
        return 1


@dataclass
class Live:
    url: str
    settings: GatewaySettings
    s3: S3Settings
    database_url: str

    def auth(self, user: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {issue_token(self.settings.jwt_secret, user, 'paid', 600)}"
        }


@contextmanager
def _serving(
    pg_dsn_base: str,
    seaweed: S3Info,
    max_photo: int = MAX_PHOTO,
    http: HTTPProtocolType = "auto",
) -> Iterator[Live]:
    name = f"gateway_uploads_{uuid.uuid4().hex[:10]}"
    database_url = ensure_database(pg_dsn_base, name)
    s3 = S3Settings(
        endpoint=seaweed.endpoint,
        bucket=seaweed.bucket,
        region=seaweed.region,
        access_key=SecretStr(seaweed.access_key),
        secret_key=SecretStr(seaweed.secret_key),
    )
    settings = gateway_settings(database_url).model_copy(
        update={"s3": s3, "reference_max_bytes": max_photo, "reference_max_photos": MAX_PHOTOS}
    )
    broker = InMemoryBroker()
    app = create_app(settings, publisher=broker.publisher(), consumer_factory=broker.consumer)
    app.state.face_detector = _OneFace()  # faces are not what these tests are about
    try:
        with serve(app, http) as url:
            yield Live(url, settings, s3, database_url)
    finally:
        drop_database(pg_dsn_base, name)


@pytest.fixture(scope="module")
def live(pg_dsn_base: str, seaweed: S3Info) -> Iterator[Live]:
    with _serving(pg_dsn_base, seaweed) as served:
        yield served


@pytest.fixture
async def client(live: Live) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live.url, timeout=20) as http:
        yield http


async def _character(live: Live, client: httpx.AsyncClient, user: str) -> str:
    response = await client.post(
        "/api/v1/characters", json={"name": "Mia"}, headers=live.auth(user)
    )
    assert response.status_code == 201, response.text
    character_id: str = response.json()["id"]
    return character_id


async def _new_character(live: Live, client: httpx.AsyncClient) -> tuple[str, str, str]:
    """A fresh user with a character: the user, the character id and its upload path."""
    user = f"up-{uuid.uuid4().hex[:8]}"
    character_id = await _character(live, client, user)
    return user, character_id, f"/api/v1/characters/{character_id}/reference-photos"


async def _stored(live: Live, user: str, character_id: str) -> tuple[int, list[str]]:
    """Photo rows of the character, and objects under the user's reference prefix."""
    conn = await asyncpg.connect(live.database_url)
    try:
        rows: int = await conn.fetchval(
            "SELECT count(*) FROM gateway.reference_photos WHERE character_id = $1", character_id
        )
    finally:
        await conn.close()
    async with S3BlobStore(live.s3) as blobs:
        keys = await blobs.list(f"references/{user}/")
    return rows, keys


# --- hostile files --------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes declaring width x height RGB pixels."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    rows = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)) * 16, 9)
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(image_bytes("JPEG", (16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_bomb(width: int, height: int) -> bytes:
    """A lossless WebP (VP8L) whose header claims width x height (at most 16384 a side)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "white").save(buffer, format="WEBP", lossless=True)
    data = bytearray(buffer.getvalue())
    start = data.index(b"VP8L") + 8 + 1  # chunk header, then the 0x2f signature byte
    bits = (
        (width - 1)
        | ((height - 1) << 14)
        | (int.from_bytes(data[start : start + 4], "little") & 0xF0000000)
    )
    data[start : start + 4] = bits.to_bytes(4, "little")
    return bytes(data)


SVG_WITH_SCRIPT = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b'<script>fetch("/api/v1/characters",{credentials:"include"})</script>'
    b'<circle cx="32" cy="32" r="30"/></svg>'
)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
HTML = b"<html><body><script>alert(document.cookie)</script></body></html>"


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    filename: str
    content_type: str
    status: int
    words: str  # what the message must say (lower case)


def hostile_files() -> list[Hostile]:
    png = image_bytes("PNG", (64, 64))
    return [
        Hostile(
            "plain text", b"just some words\n", "a.txt", "text/plain", 422, "jpeg, png or webp"
        ),
        Hostile(
            "text named .jpg", b"just some words\n", "a.jpg", "image/jpeg", 422, "jpeg, png or webp"
        ),
        Hostile("PDF", PDF, "a.pdf", "application/pdf", 422, "jpeg, png or webp"),
        Hostile(
            "SVG with a script", SVG_WITH_SCRIPT, "a.svg", "image/svg+xml", 422, "jpeg, png or webp"
        ),
        Hostile("SVG named .png", SVG_WITH_SCRIPT, "a.png", "image/png", 422, "jpeg, png or webp"),
        Hostile("HTML named .jpg", HTML, "a.jpg", "image/jpeg", 422, "jpeg, png or webp"),
        Hostile(
            "GIF", image_bytes("GIF", (32, 32)), "a.gif", "image/gif", 422, "jpeg, png or webp"
        ),
        Hostile(
            "GIF named .png",
            image_bytes("GIF", (32, 32)),
            "a.png",
            "image/png",
            422,
            "jpeg, png or webp",
        ),
        Hostile(
            "BMP", image_bytes("BMP", (32, 32)), "a.bmp", "image/bmp", 422, "jpeg, png or webp"
        ),
        Hostile(
            "TIFF", image_bytes("TIFF", (32, 32)), "a.tif", "image/tiff", 422, "jpeg, png or webp"
        ),
        Hostile("zero bytes", b"", "a.png", "image/png", 422, "empty"),
        Hostile(
            "PNG bomb 30000x30000", png_bomb(30_000, 30_000), "a.png", "image/png", 422, "pixels"
        ),
        Hostile("PNG bomb 7000x7000", png_bomb(7_000, 7_000), "a.png", "image/png", 422, "pixels"),
        Hostile(
            "JPEG bomb 30000x30000", jpeg_bomb(30_000, 30_000), "a.jpg", "image/jpeg", 422, "pixels"
        ),
        Hostile(
            "WebP bomb 16384x16384",
            webp_bomb(16_384, 16_384),
            "a.webp",
            "image/webp",
            422,
            "pixels",
        ),
        Hostile("truncated PNG", png[: len(png) // 2], "a.png", "image/png", 422, "readable"),
        Hostile("PNG signature only", png[:8], "a.png", "image/png", 422, "jpeg, png or webp"),
        Hostile(
            "truncated JPEG",
            image_bytes("JPEG", (256, 256), "red")[:400],
            "a.jpg",
            "image/jpeg",
            422,
            "readable",
        ),
        Hostile(
            "PNG with a corrupt IDAT",
            png[:50] + bytes(b ^ 0x5A for b in png[50:-12]) + png[-12:],
            "a.png",
            "image/png",
            422,
            "readable",
        ),
        Hostile(
            "over the size limit",
            png + b"\x00" * MAX_PHOTO,
            "a.png",
            "image/png",
            413,
            f"larger than {MAX_PHOTO} bytes",
        ),
    ]


async def test_hostile_files_are_refused_naming_the_problem_and_nothing_is_stored(
    live: Live, client: httpx.AsyncClient
) -> None:
    user, character_id, path = await _new_character(live, client)
    good = image_bytes("PNG", (48, 48))
    for bad in hostile_files():
        # Alone, and second after a good photo: all or nothing, so the good one is not kept.
        for files in ([bad], ["good", bad]):
            parts = [
                ("photos", ("ok.png", good, "image/png"))
                if item == "good"
                else ("photos", (bad.filename, bad.data, bad.content_type))
                for item in files
            ]
            response = await client.post(path, files=parts, headers=live.auth(user))
            label = f"{bad.name} (as photo {len(files) - 1})"
            assert response.status_code == bad.status, f"{label}: {response.text}"
            [problem] = response.json()["detail"]
            assert problem["loc"] == ["body", "photos", len(files) - 1], label
            assert bad.words in problem["msg"].lower(), f"{label}: {problem['msg']}"
    listed = await client.get(path, headers=live.auth(user))
    assert listed.status_code == 200 and listed.json()["items"] == []
    assert await _stored(live, user, character_id) == (0, [])

    # The same request with a real photo is stored: the checks above can see a write.
    response = await client.post(
        path, files=[("photos", ("ok.png", good, "image/png"))], headers=live.auth(user)
    )
    assert response.status_code == 201, response.text
    rows, keys = await _stored(live, user, character_id)
    assert rows == 1 and len(keys) == 1 and keys[0].endswith(".png")


async def test_a_lying_name_or_type_stores_what_the_bytes_are(
    live: Live, client: httpx.AsyncClient
) -> None:
    user, character_id, path = await _new_character(live, client)
    jpeg = image_bytes("JPEG", (40, 30), "blue")
    response = await client.post(
        path,
        files=[("photos", ("../../../etc/passwd.png", jpeg, "image/png"))],
        headers=live.auth(user),
    )
    assert response.status_code == 201, response.text
    [photo] = response.json()["items"]
    assert (photo["contentType"], photo["width"], photo["height"]) == ("image/jpeg", 40, 30)
    [key] = (await _stored(live, user, character_id))[1]
    # The client's file name never reaches the key: content-addressed, extension from bytes.
    assert key.endswith(".jpg") and "passwd" not in key and ".." not in key
    async with S3BlobStore(live.s3) as blobs:
        assert await blobs.get(key) == jpeg


async def test_malformed_requests_are_refused_cleanly(
    live: Live, client: httpx.AsyncClient
) -> None:
    user, character_id, path = await _new_character(live, client)
    auth = live.auth(user)
    png = image_bytes("PNG", (20, 20))
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("JSON instead of files", {"json": {"photos": ["x"]}}, 422, "photos"),
        ("a text field, not a file", {"data": {"photos": "hello"}}, 422, "photos"),
        ("no parts", {"files": {"other": ("a.png", png, "image/png")}}, 422, "photos"),
        (
            "too many photos",
            {
                "files": [
                    ("photos", (f"{i}.png", image_bytes("PNG", (20 + i, 20)), "image/png"))
                    for i in range(3)
                ]
            },
            422,
            f"between 1 and {MAX_PHOTOS}",
        ),
        (
            "a broken multipart body",
            {
                "content": b'--xyz\r\nContent-Disposition: form-data; name="photos"\r\n\r\nabc',
                "headers": {**auth, "Content-Type": "multipart/form-data; boundary=xyz"},
            },
            422,
            "photos",
        ),
        (
            "multipart without a boundary",
            {"content": b"abc", "headers": {**auth, "Content-Type": "multipart/form-data"}},
            400,
            "",
        ),
    ]
    for label, kwargs, status_code, words in cases:
        kwargs.setdefault("headers", auth)
        response = await client.post(path, **kwargs)
        assert response.status_code == status_code, f"{label}: {response.text}"
        assert words in response.text, f"{label}: {response.text}"
    assert await _stored(live, user, character_id) == (0, [])


# --- huge bodies, over a raw socket -----------------------------------------------------


def _exchange(url: str, head: bytes, body: Iterable[bytes]) -> tuple[int, bytes, int]:
    """Send the head, then body chunks until the server answers; returns the status, the
    response and how many body bytes were sent before the answer came."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=20) as sock:
        sock.sendall(head)
        sent = 0
        for chunk in body:
            ready, _, _ = select.select([sock], [], [], 0)
            if ready:
                break  # the server has answered: stop sending
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            ready, _, _ = select.select([sock], [], [], 10)
            assert ready, f"no answer after {sent} body bytes: {response!r}"
            data = sock.recv(65536)
            if not data:
                break
            response += data
    status = int(response.split(b" ", 2)[1])
    return status, response, sent


def _multipart_head(path: str, headers: dict[str, str], length: int | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: gateway",
        "Content-Type: multipart/form-data; boundary=b0undary",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _endless_photo(chunk_size: int, total: int) -> Iterator[bytes]:
    """A multipart body whose one file part never seems to end, `total` bytes in all."""
    yield b'--b0undary\r\nContent-Disposition: form-data; name="photos"; filename="big.png"\r\n'
    yield b"Content-Type: image/png\r\n\r\n"
    for _ in range(total // chunk_size):
        yield b"\x89" * chunk_size


def _chunked(parts: Iterator[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"


async def test_huge_bodies_are_refused_before_they_are_read(
    live: Live, client: httpx.AsyncClient
) -> None:
    user, character_id, path = await _new_character(live, client)
    auth = live.auth(user)

    # A declared length over the limit: refused from the headers, not one body byte read.
    head = _multipart_head(path, auth, 2 * 1024**3)
    status_code, response, sent = await asyncio.to_thread(_exchange, live.url, head, [])
    assert status_code == 413, response
    assert f"larger than {BODY_LIMIT} bytes".encode() in response

    # No length (chunked): counted as it arrives, refused once past the limit; the client
    # sending 50 MB gets its answer long before it is done.
    total = 50 * 1024 * 1024
    head = _multipart_head(path, auth, None)
    body = _chunked(_endless_photo(64 * 1024, total))
    status_code, response, sent = await asyncio.to_thread(_exchange, live.url, head, body)
    assert status_code == 413, response
    assert sent < total / 2, f"the server let the client send {sent} of {total} bytes"

    # An unauthenticated upload under the limit is refused before its body is read.
    head = _multipart_head(path, {}, BODY_LIMIT - 1024)
    status_code, response, sent = await asyncio.to_thread(_exchange, live.url, head, [])
    assert status_code == 401, response

    assert (await client.get("/healthz")).status_code == 200
    assert await _stored(live, user, character_id) == (0, [])


# --- bodies counted as they stream -------------------------------------------------------


def _send_whole(url: str, raw: bytes) -> list[int]:
    """Send `raw` whole, then read until the server closes; the statuses it answered."""
    address = urlsplit(url)
    response = b""
    with socket.create_connection((address.hostname, address.port), timeout=20) as sock:
        # The server may answer and close before it has read everything (ENOTCONN on the
        # shutdown, EPIPE or a reset on the send): what it answered is still to be read.
        with contextlib.suppress(OSError):
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                response += data
    return [
        int(line.split(b" ")[1])
        for line in response.split(b"\r\n")
        if line.startswith(b"HTTP/1.1 ")
    ]


def _upload_body(*photos: bytes) -> bytes:
    parts = [
        b'--b0undary\r\nContent-Disposition: form-data; name="photos"; filename="p.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + photo + b"\r\n"
        for photo in photos
    ]
    return b"".join(parts) + b"--b0undary--\r\n"


async def test_a_chunked_upload_under_the_limit_is_stored(
    live: Live, client: httpx.AsyncClient
) -> None:
    user, character_id, path = await _new_character(live, client)
    # Two photos of 200 KB each: near the per-photo limit, sent in 16 KB chunks.
    photos = [
        image_bytes("PNG", (250, 250), colour) + b"\x00" * (200 * 1024)
        for colour in ("red", "blue")
    ]
    body = _upload_body(*photos)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    headers = {**live.auth(user), "Content-Type": "multipart/form-data; boundary=b0undary"}
    response = await client.post(path, content=chunks(), headers=headers)
    assert response.status_code == 201, response.text
    assert len(response.json()["items"]) == 2
    rows, keys = await _stored(live, user, character_id)
    assert rows == 2 and len(keys) == 2
    async with S3BlobStore(live.s3) as blobs:
        assert sorted([await blobs.get(key) for key in keys]) == sorted(photos)


async def test_a_chunked_json_body_over_the_limit_is_refused_as_it_arrives(
    live: Live, client: httpx.AsyncClient
) -> None:
    user = f"up-{uuid.uuid4().hex[:8]}"
    lines = [
        "POST /api/v1/characters HTTP/1.1",
        "Host: gateway",
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        *(f"{k}: {v}" for k, v in live.auth(user).items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    total = 20 * 1024 * 1024

    def pieces() -> Iterator[bytes]:
        yield b'{"name": "Mia", "description": "'
        for _ in range(total // (64 * 1024)):
            yield b"x" * (64 * 1024)

    body = _chunked(pieces())
    status_code, response, sent = await asyncio.to_thread(_exchange, live.url, head, body)
    assert status_code == 413, response
    assert f"request body larger than {MAX_JSON_BYTES} bytes".encode() in response
    assert sent < total / 2, f"the server let the client send {sent} of {total} bytes"
    listed = await client.get("/api/v1/characters", headers=live.auth(user))
    assert listed.status_code == 200 and listed.json()["items"] == []


async def test_multipart_with_a_bad_token_is_refused_before_its_body(
    live: Live, client: httpx.AsyncClient
) -> None:
    user, character_id, path = await _new_character(live, client)
    expired = {
        "Authorization": f"Bearer {issue_token(live.settings.jwt_secret, user, 'paid', -60)}"
    }
    for headers, length in [
        ({"Authorization": "Bearer not-a-token"}, None),
        (expired, None),
        (expired, BODY_LIMIT - 1024),
    ]:
        # Only the head is sent: the answer cannot wait for a body that never comes.
        head = _multipart_head(path, headers, length)
        status_code, response, _ = await asyncio.to_thread(_exchange, live.url, head, [])
        assert status_code == 401, response
        assert b'www-authenticate: Bearer error="invalid_token"' in response
    assert await _stored(live, user, character_id) == (0, [])


async def test_a_length_that_lies_does_not_carry_more_body(
    live: Live, client: httpx.AsyncClient
) -> None:
    # uvicorn frames the body by the declared length: the app gets the first 100 bytes
    # (a broken form), the rest is taken for a next request and refused by the parser.
    user, character_id, path = await _new_character(live, client)
    body = _upload_body(image_bytes("PNG", (40, 40))) + b"\x89" * (2 * BODY_LIMIT)
    raw = _multipart_head(path, live.auth(user), 100) + body
    statuses = await asyncio.to_thread(_send_whole, live.url, raw)
    assert statuses and all(400 <= s < 500 for s in statuses), statuses

    # Content-Length beside chunked framing is refused by uvicorn's parser outright.
    head = _multipart_head(path, live.auth(user), None)
    head = head.replace(b"Transfer-Encoding", b"Content-Length: 100\r\nTransfer-Encoding")
    raw = head + b"".join(_chunked(iter([body])))
    statuses = await asyncio.to_thread(_send_whole, live.url, raw)
    assert statuses == [400], statuses
    assert (await client.get("/healthz")).status_code == 200
    assert await _stored(live, user, character_id) == (0, [])


async def test_h11_content_length_beside_chunked_is_counted_all_the_same(
    pg_dsn_base: str, seaweed: S3Info
) -> None:
    # h11 frames such a request by its chunks and passes the small Content-Length on: the
    # body is counted whatever was declared (it once went through uncounted).
    with _serving(pg_dsn_base, seaweed, http="h11") as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=20) as client:
            user = f"up-{uuid.uuid4().hex[:8]}"
            character_id = await _character(served, client, user)
            path = f"/api/v1/characters/{character_id}/reference-photos"
            head = _multipart_head(path, served.auth(user), None)
            head = head.replace(b"Transfer-Encoding", b"Content-Length: 100\r\nTransfer-Encoding")
            total = 50 * 1024 * 1024
            body = _chunked(_endless_photo(64 * 1024, total))
            status_code, response, sent = await asyncio.to_thread(_exchange, served.url, head, body)
            assert status_code == 413, response
            assert f"request body larger than {BODY_LIMIT} bytes".encode() in response
            assert sent < total / 2, f"the server let the client send {sent} of {total} bytes"
            assert await _stored(served, user, character_id) == (0, [])


async def test_a_refused_chunked_upload_costs_the_server_a_chunk_not_the_body(
    pg_dsn_base: str, seaweed: S3Info
) -> None:
    # Limits of the default's order (8 MB a photo, 17 MB a body): the old middleware held
    # a chunked body up to the limit before refusing it.
    max_photo = 8 * 1024 * 1024
    limit = MAX_PHOTOS * max_photo + 1024 * 1024
    with _serving(pg_dsn_base, seaweed, max_photo=max_photo) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=20) as client:
            user = f"up-{uuid.uuid4().hex[:8]}"
            character_id = await _character(served, client, user)
            path = f"/api/v1/characters/{character_id}/reference-photos"
            head = _multipart_head(path, served.auth(user), None)
            total = 40 * 1024 * 1024
            body = _chunked(_endless_photo(64 * 1024, total))
            tracemalloc.start()  # the server runs in this process: its threads are traced
            try:
                status_code, response, sent = await asyncio.to_thread(
                    _exchange, served.url, head, body
                )
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert status_code == 413, response
            assert f"request body larger than {limit} bytes".encode() in response
            assert peak < 4 * 1024 * 1024, f"peak {peak} bytes refusing {sent} of {total}"
            assert await _stored(served, user, character_id) == (0, [])
