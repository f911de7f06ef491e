"""Authorization matrix: no user reaches, changes or learns of another user's data, and no
bad token gets in, on every route the app has.

The routes are enumerated from the app itself, so a new endpoint is covered the day it is
added, and this test fails until it is placed: a route with path parameters is tried
automatically with the first user's ids (a parameter name it does not know fails the
test), a route without them must be listed in COLLECTIONS, and a route that takes a body
needs a valid body in BODIES (so the 404 is about ownership, not a 422 about the body).
Public routes are listed in PUBLIC and must answer without a token.

Real PostgreSQL; the in-memory broker and blob store (nothing here is about storage).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount
from starlette.types import Message

from imagegen.stack.postgres import drop_database, ensure_database
from schemas.events import JobStatus
from services.gateway.auth import STREAM_SCOPE, issue_token
from tests.unit.gateway import image_events as ev
from tests.unit.gateway.conftest import Gateway, running_gateway
from tests.unit.gateway.resources_support import image_bytes
from tests.unit.gateway.test_loras import LORA

pytestmark = pytest.mark.integration

PUBLIC = {
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
"""Routes anyone may call: the web page, health, metrics and the API's own description."""

PUBLIC_MOUNTS = {"/static"}
"""Plain files of the web page."""

COLLECTIONS = {
    ("POST", "/api/v1/characters"): "create-own",
    ("GET", "/api/v1/characters"): "list",
    ("POST", "/api/v1/stories"): "refers-to-others",
    ("GET", "/api/v1/stories"): "list",
    ("POST", "/api/v1/images/characters"): "refers-to-others",
    ("POST", "/api/v1/images/scenes"): "refers-to-others",
    ("GET", "/api/v1/images"): "list",
    ("POST", "/api/generate"): "refers-to-others",
    ("GET", "/api/v1/jobs"): "list",
    ("GET", "/api/v1/events"): "user-stream",
    ("POST", "/api/v1/stream-tokens"): "create-own",
}
"""Routes without an id in the path, and what a second user may do there."""

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/characters"): {"name": "Mia"},
    ("PATCH", "/api/v1/characters/{character_id}"): {"name": "Stolen"},
    ("POST", "/api/v1/stories"): {
        "title": "T",
        "pages": [{"pageNumber": 1, "text": "x"}],
        "characterIds": ["{character_id}"],
    },
    ("PATCH", "/api/v1/stories/{story_id}"): {"title": "Stolen"},
    ("POST", "/api/v1/images/characters"): {"characterId": "{character_id}", "style": "watercolor"},
    ("POST", "/api/v1/images/scenes"): {
        "storyId": "{story_id}",
        "pageNumber": 1,
        "characterIds": ["{character_id}"],
        "sceneDescription": "a bridge",
        "style": "watercolor",
    },
    ("POST", "/api/v1/images/stories/{story_id}/generate-all"): {"style": "watercolor"},
    ("POST", "/api/v1/images/{image_id}/regenerate"): {"modifications": {"seed": 7}},
    ("POST", "/api/v1/images/{image_id}/review"): {"decision": "rejected"},
    ("POST", "/api/generate"): {"character_id": "{character_id}", "image_count": 1},
}
"""A valid body for every route that takes one; "{name}" is replaced by an id."""

ID_NAMES = ("character_id", "photo_id", "story_id", "job_id", "image_id")
"""The path parameters the matrix can fill (one of each of the first user's resources)."""

UPLOADS = {("POST", "/api/v1/characters/{character_id}/reference-photos")}
"""Routes whose body is multipart (files), not JSON."""
LORA_UPLOADS = {("PUT", "/api/v1/characters/{character_id}/lora")}
"""A character's LoRA file (multipart, field `file`)."""


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    takes_body: bool

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


def endpoints(app: FastAPI) -> tuple[list[Endpoint], set[str]]:
    """Every (method, path) the app routes, and its mounts' paths."""
    found: list[Endpoint] = []
    mounts: set[str] = set()
    for context in iter_route_contexts(app.router.routes):
        route = context.original_route
        if isinstance(route, Mount):
            mounts.add(route.path)
            continue
        assert context.path_format is not None, route
        takes_body = isinstance(route, APIRoute) and route.body_field is not None
        for method in sorted((context.methods or set()) - {"HEAD"}):
            found.append(Endpoint(method, context.path_format, takes_body))
    return found, mounts


@dataclass
class Owned:
    """The first user's resources, one of each kind."""

    user: str
    ids: dict[str, str]
    image_job: str
    stream_token: str


class _OneFace:
    def count(self, image: Any) -> int:
        return 1


@pytest.fixture(scope="module")
def attack_db_url(pg_dsn_base: str) -> Iterator[str]:
    name = f"gateway_authz_{uuid.uuid4().hex[:10]}"
    url = ensure_database(pg_dsn_base, name)
    try:
        yield url
    finally:
        drop_database(pg_dsn_base, name)


@pytest.fixture
async def gateway(attack_db_url: str) -> AsyncIterator[Gateway]:
    async with running_gateway(attack_db_url) as gw:
        gw.app.state.face_detector = _OneFace()
        yield gw


async def _ok(response: httpx.Response, status_code: int) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    body: dict[str, Any] = response.json()
    return body


async def _create_everything(gw: Gateway, user: str) -> Owned:
    auth = gw.auth(user)
    client = gw.client
    character = await _ok(
        await client.post("/api/v1/characters", json={"name": "A"}, headers=auth), 201
    )
    char_id = character["id"]
    photos = await _ok(
        await client.post(
            f"/api/v1/characters/{char_id}/reference-photos",
            files=[("photos", ("a.png", image_bytes("PNG", (40, 40)), "image/png"))],
            headers=auth,
        ),
        201,
    )
    story = await _ok(
        await client.post(
            "/api/v1/stories",
            json={"title": "A's", "pages": [{"pageNumber": 1}], "characterIds": [char_id]},
            headers=auth,
        ),
        201,
    )
    pack = await _ok(
        await client.post(
            "/api/generate", json={"character_id": char_id, "image_count": 2}, headers=auth
        ),
        202,
    )
    portrait = await _ok(
        await client.post(
            "/api/v1/images/characters",
            json={"characterId": char_id, "style": "watercolor"},
            headers=auth,
        ),
        202,
    )
    image_job, image_id = portrait["jobId"], portrait["imageId"]
    # The image becomes real the way it does in production: through the event projection.
    await gw.feed(
        ev.queued(image_job, user, image_id, kind="portrait", character=char_id),
        ev.stored(image_job, user, image_id, kind="portrait", character=char_id),
        ev.finished(image_job, user, 1, 1, JobStatus.COMPLETED),
        ev.progress(pack["job_id"], user, 2, 0, 1, "generating"),
    )
    token = await _ok(await client.post("/api/v1/stream-tokens", headers=auth), 200)
    ids = {
        "character_id": char_id,
        "photo_id": photos["items"][0]["id"],
        "story_id": story["id"],
        "job_id": pack["job_id"],
        "image_id": image_id,
    }
    return Owned(user=user, ids=ids, image_job=image_job, stream_token=token["token"])


def _fill(template: Any, ids: dict[str, str]) -> Any:
    text = json.dumps(template)
    for name, value in ids.items():
        text = text.replace("{" + name + "}", value)
    return json.loads(text)


async def _call(gw: Gateway, endpoint: Endpoint, ids: dict[str, str], user: str) -> httpx.Response:
    path = endpoint.path
    for name in endpoint.params:
        assert name in ids, f"{endpoint.method} {path}: no id known for {{{name}}}; add one"
        path = path.replace("{" + name + "}", ids[name])
    key = (endpoint.method, endpoint.path)
    kwargs: dict[str, Any] = {"headers": gw.auth(user)}
    if key in UPLOADS:
        kwargs["files"] = [("photos", ("b.png", image_bytes("PNG", (41, 40)), "image/png"))]
    elif key in LORA_UPLOADS:
        kwargs["files"] = {"file": ("mira.safetensors", LORA, "application/octet-stream")}
    elif endpoint.takes_body:
        assert key in BODIES, f"{endpoint.method} {endpoint.path} takes a body: add one to BODIES"
        kwargs["json"] = _fill(BODIES[key], ids)
    return await gw.client.request(endpoint.method, path, **kwargs)


def _anonymised(response: httpx.Response, ids: dict[str, str]) -> tuple[int, str]:
    text = response.text
    for value in ids.values():
        text = text.replace(value, "<id>")
    return response.status_code, text


async def test_another_user_gets_404_for_everything_of_the_first(gateway: Gateway) -> None:
    gw = gateway
    owner = await _create_everything(gw, f"alice-{uuid.uuid4().hex[:6]}")
    intruder = f"mallory-{uuid.uuid4().hex[:6]}"
    nonexistent = {name: str(uuid.uuid4()) for name in owner.ids}
    routes, mounts = endpoints(gw.app)
    assert mounts == PUBLIC_MOUNTS, f"unplaced mounts: {mounts - PUBLIC_MOUNTS}"
    before = await _owner_view(gw, owner)
    tried: list[str] = []

    for endpoint in routes:
        key = (endpoint.method, endpoint.path)
        label = f"{endpoint.method} {endpoint.path}"
        if key in PUBLIC:
            response = await gw.client.request(endpoint.method, endpoint.path)
            assert response.status_code != 401, f"{label} is listed public but wants a token"
            continue
        if endpoint.params:
            theirs = await _call(gw, endpoint, owner.ids, intruder)
            assert theirs.status_code == 404, f"{label}: {theirs.status_code} {theirs.text}"
            # Indistinguishable from an id that does not exist: no existence leak.
            missing = await _call(gw, endpoint, nonexistent, intruder)
            assert _anonymised(theirs, owner.ids) == _anonymised(missing, nonexistent), label
            tried.append(label)
            continue
        assert key in COLLECTIONS, f"{label} is neither public nor in the authorization matrix"
        kind = COLLECTIONS[key]
        if kind == "list":
            response = await _call(gw, endpoint, owner.ids, intruder)
            assert response.status_code == 200, f"{label}: {response.text}"
            _assert_none_of(owner, response.text, label)
        elif kind == "refers-to-others":
            theirs = await _call(gw, endpoint, owner.ids, intruder)
            assert theirs.status_code in (404, 422), f"{label}: {theirs.status_code} {theirs.text}"
            missing = await _call(gw, endpoint, nonexistent, intruder)
            assert _anonymised(theirs, owner.ids) == _anonymised(missing, nonexistent), label
        elif kind == "create-own":
            response = await _call(gw, endpoint, owner.ids, intruder)
            assert response.status_code in (200, 201), f"{label}: {response.text}"
            _assert_none_of(owner, response.text, label)
        elif kind == "user-stream":
            await _assert_user_stream_is_own(gw, owner, intruder)
        tried.append(label)

    # Filtered lists with the owner's ids are empty for the intruder.
    for query in ({"characterId": owner.ids["character_id"]}, {"storyId": owner.ids["story_id"]}):
        listed = await gw.client.get("/api/v1/images", params=query, headers=gw.auth(intruder))
        assert listed.status_code == 200 and listed.json()["items"] == [], listed.text
    # The intruder's stream token opens none of the owner's job streams either.
    stream_token = issue_token(gw.settings.jwt_secret, intruder, "paid", 60, scope=STREAM_SCOPE)
    for job in (owner.ids["job_id"], owner.image_job):
        response = await gw.client.get(
            f"/api/v1/jobs/{job}/events", params={"stream_token": stream_token}
        )
        assert response.status_code == 404, response.text
    # Nothing of the owner's changed, and the owner still reaches all of it.
    assert await _owner_view(gw, owner) == before
    assert len(tried) >= 30, tried


async def _owner_view(gw: Gateway, owner: Owned) -> dict[str, Any]:
    """What the owner sees of their resources (signed URLs left out: they are re-signed)."""
    auth = gw.auth(owner.user)
    ids = owner.ids
    paths = {
        "character": f"/api/v1/characters/{ids['character_id']}",
        "photos": f"/api/v1/characters/{ids['character_id']}/reference-photos",
        "story": f"/api/v1/stories/{ids['story_id']}",
        "job": f"/api/v1/jobs/{ids['job_id']}",
        "image": f"/api/v1/images/{ids['image_id']}",
    }
    view: dict[str, Any] = {}
    for name, path in paths.items():
        response = await gw.client.get(path, headers=auth)
        assert response.status_code == 200, f"the owner lost {name}: {response.text}"
        view[name] = _without_urls(response.json())
    stream = await gw.client.get(
        f"/api/v1/jobs/{owner.image_job}/events", params={"stream_token": owner.stream_token}
    )
    assert stream.status_code == 200 and "image_stored" in stream.text, stream.text
    return view


def _without_urls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_urls(v) for k, v in value.items() if "url" not in k.lower()}
    if isinstance(value, list):
        return [_without_urls(v) for v in value]
    return value


def _assert_none_of(owner: Owned, text: str, label: str) -> None:
    for name, value in {**owner.ids, "image_job": owner.image_job, "user": owner.user}.items():
        assert value not in text, f"{label} shows the owner's {name}"


async def _assert_user_stream_is_own(gw: Gateway, owner: Owned, intruder: str) -> None:
    """The intruder's own stream (from the start of the log) carries only their events: an
    event of theirs logged after all of the owner's marks the point where a leak would show."""
    own = await _ok(
        await gw.client.post("/api/v1/characters", json={"name": "M"}, headers=gw.auth(intruder)),
        201,
    )
    job = await _ok(
        await gw.client.post(
            "/api/generate",
            json={"character_id": own["id"], "image_count": 1},
            headers=gw.auth(intruder),
        ),
        202,
    )
    marker = f"{job['job_id']}-0"
    await gw.feed(ev.queued(job["job_id"], intruder, marker))
    # From the start of the log: without Last-Event-ID the user stream is live only.
    status_code, text = await _read_stream(
        gw.app, "/api/v1/events", {**gw.auth(intruder), "Last-Event-ID": "0"}, until=marker
    )
    assert status_code == 200
    assert marker in text
    _assert_none_of(owner, text, "GET /api/v1/events")


async def _read_stream(
    app: FastAPI, path: str, headers: dict[str, str], *, until: str, timeout: float = 5.0
) -> tuple[int, str]:
    """GET an endless SSE stream in-process until `until` shows up, then disconnect (httpx's
    ASGI transport waits for the whole response, which never ends)."""
    seen = bytearray()
    statuses: list[int] = []
    enough = asyncio.Event()
    asked = False

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await enough.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message["type"] == "http.response.body":
            seen.extend(message.get("body", b""))
            if until.encode() in seen or not message.get("more_body", False):
                enough.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
        "state": {},
    }
    task = asyncio.create_task(app(scope, receive, send))
    try:
        await asyncio.wait_for(enough.wait(), timeout)
    finally:
        enough.set()
        await asyncio.wait_for(task, 5)
    return statuses[0], seen.decode()


# --- tokens ---------------------------------------------------------------------------


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        raw = json.dumps(value, default=str).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bad_tokens(secret: str, user: str) -> dict[str, tuple[str | None, str]]:
    """Each refused token (None: no Authorization header) and a word its 401 must say."""
    now = datetime.now(UTC)
    claims = {"sub": user, "tier": "paid", "iat": now, "exp": now + timedelta(minutes=5)}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    valid = jwt.encode(claims, secret, algorithm="HS256")
    return {
        "missing": (None, "missing"),
        "expired": (jwt.encode({**claims, "exp": now - timedelta(seconds=5)}, secret), "expired"),
        "alg none": (_unsigned(claims), "algorithm"),
        "alg none, no signature part": (_unsigned(claims)[:-1], "invalid"),
        "wrong secret": (
            jwt.encode(claims, "another-secret-of-at-least-32-bytes!!", algorithm="HS256"),
            "signature",
        ),
        "tampered payload": (
            valid.split(".")[0]
            + "."
            + _unsigned({**claims, "sub": "someone-else"}).split(".")[1]
            + "."
            + valid.split(".")[2],
            "signature",
        ),
        "RS256 without a JWKS": (jwt.encode(claims, rsa_key, algorithm="RS256"), "algorithm"),
        "no subject": (jwt.encode({k: v for k, v in claims.items() if k != "sub"}, secret), "sub"),
        "no expiry": (jwt.encode({k: v for k, v in claims.items() if k != "exp"}, secret), "exp"),
        "unknown tier": (jwt.encode({**claims, "tier": "root"}, secret), "tier"),
        "foreign audience": (jwt.encode({**claims, "aud": "another-api"}, secret), "audience"),
        "stream token": (
            jwt.encode({**claims, "scope": STREAM_SCOPE}, secret),
            "stream",
        ),
        "malformed": ("not-a-jwt", "invalid"),
        "three dots of junk": ("a.b.c", "invalid"),
    }


async def test_bad_tokens_are_refused_on_every_protected_route(gateway: Gateway) -> None:
    gw = gateway
    secret = gw.settings.jwt_secret.get_secret_value()
    tokens = bad_tokens(secret, "alice")
    routes, _ = endpoints(gw.app)
    protected = [e for e in routes if (e.method, e.path) not in PUBLIC]
    ids = {name: str(uuid.uuid4()) for name in ID_NAMES}
    for endpoint in protected:
        path = _fill(endpoint.path, ids) if endpoint.params else endpoint.path
        for name, (token, word) in tokens.items():
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            response = await gw.client.request(endpoint.method, path, headers=headers)
            label = f"{endpoint.method} {endpoint.path} with {name}"
            assert response.status_code == 401, f"{label}: {response.status_code} {response.text}"
            detail = response.json()["detail"]
            assert isinstance(detail, str) and word in detail.lower(), f"{label}: {detail}"
            assert response.headers["www-authenticate"].startswith("Bearer"), label
    # Not a bearer scheme at all.
    response = await gw.client.get("/api/v1/characters", headers={"Authorization": "Basic YTpi"})
    assert response.status_code == 401
    # A stream token in the query of a non-stream route is not a credential either.
    valid_stream = issue_token(gw.settings.jwt_secret, "alice", "paid", 60, scope=STREAM_SCOPE)
    response = await gw.client.get("/api/v1/characters", params={"stream_token": valid_stream})
    assert response.status_code == 401


async def test_bad_stream_tokens_are_refused_on_the_streams(gateway: Gateway) -> None:
    gw = gateway
    secret = gw.settings.jwt_secret.get_secret_value()
    now = datetime.now(UTC)
    claims = {"sub": "alice", "tier": "paid", "exp": now + timedelta(minutes=5)}
    refused = {
        "an access token": jwt.encode(claims, secret),
        "expired": jwt.encode({**claims, "scope": STREAM_SCOPE, "exp": now - timedelta(1)}, secret),
        "alg none": _unsigned({**claims, "scope": STREAM_SCOPE}),
        "wrong secret": jwt.encode(
            {**claims, "scope": STREAM_SCOPE}, "another-secret-of-at-least-32-bytes!!"
        ),
        "malformed": "junk",
    }
    for path in (f"/api/v1/jobs/{uuid.uuid4()}/events", "/api/v1/events"):
        for name, token in refused.items():
            response = await gw.client.get(path, params={"stream_token": token})
            assert response.status_code == 401, f"{path} with {name}: {response.text}"
            assert response.json()["detail"].startswith("stream_token:"), response.text
