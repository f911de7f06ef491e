"""`Idempotency-Key` on POSTs: a retried request gets the first response, never a second effect.

An ASGI middleware, so every POST route gets it without wiring. For a POST carrying the
header and a valid bearer token it claims (user, key) in PostgreSQL: the primary key lets
exactly one of any number of concurrent duplicates (on any replica) claim it. The claimer
runs the route, stores status, headers and body, then answers. Later requests with the key:
- same request (method, path, query and body; JSON compared canonically, multipart
  without its random boundary) -> the stored response again, with `Idempotent-Replayed: true`;
- a different request -> 422 naming the `Idempotency-Key` header;
- while the first is still running -> 409 with Retry-After.
Keys are scoped per user and expire after `idempotency_ttl_s` (24 h). Responses that say
"try again" (401, 403, 408, 409, 429, 5xx) are not kept: the claim is released so a retry
does the work. A claim left pending longer than `idempotency_pending_s` (its replica died)
may be taken over.

A route that creates a job records its answer in its own transaction and takes its job id
from the claim (services/gateway/idempotent_jobs.py), so a replica dying between that
commit and the store here leaves an answer to replay, never a second job.

The body is hashed as it arrives and spooled (memory up to 1 MiB, then a temporary file),
then replayed to the app from the spool: an upload of tens of MB costs the spool's memory,
not its size. A body cut off on the way (the client left, or BodyLimitMiddleware refused
it) claims nothing.

Routes only declare the header for the OpenAPI document: `dependencies=[IdempotencyKey]`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile
from typing import Annotated, Any

import anyio.to_thread
import asyncpg
from fastapi import Depends, Header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.idempotent_jobs import SCOPE_KEY, ClaimedKey

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_NOT_KEPT = frozenset({401, 403, 408, 409, 425, 429})
SPOOL_MEMORY_BYTES = 1024 * 1024
"""A body up to this stays in memory while it is hashed and replayed; a larger one (a
multipart upload of tens of MB) goes to a temporary file."""
REPLAY_CHUNK_BYTES = 64 * 1024


def _keep(status_code: int) -> bool:
    return status_code < 500 and status_code not in _NOT_KEPT


class RequestDigest:
    """What makes two requests "the same" for a key, hashed as the body streams by: feed
    it every chunk with `update`, then take `hexdigest`."""

    def __init__(self, method: str, path: str, query: bytes, content_type: str) -> None:
        self._json: list[bytes] | None = None
        self._boundary = b""
        self._tail = b""
        if content_type.startswith("application/json"):
            # Compared canonically, so kept whole: the body limit holds JSON to 2 MiB.
            self._json = []
        elif content_type.startswith("multipart/form-data"):
            match = re.search(r"boundary=\"?([^\";]+)\"?", content_type)
            if match:
                self._boundary = match.group(1).encode()
            content_type = "multipart/form-data"
        self._digest = hashlib.sha256()
        for part in (method.encode(), path.encode(), query, content_type.encode()):
            self._digest.update(part + b"\x00")

    def update(self, chunk: bytes) -> None:
        if self._json is not None:
            self._json.append(chunk)
        elif not self._boundary:
            self._digest.update(chunk)
        else:
            self._update_without_boundary(chunk)

    def _update_without_boundary(self, chunk: bytes) -> None:
        # `body.replace(boundary, b"")` a chunk at a time: leftmost matches, none overlapping.
        # The tail held back is what may begin a boundary that the next chunk ends.
        data = self._tail + chunk
        view = memoryview(data)
        start = 0
        while (found := data.find(self._boundary, start)) >= 0:
            self._digest.update(view[start:found])
            start = found + len(self._boundary)
        keep = max(start, len(data) - len(self._boundary) + 1)
        self._digest.update(view[start:keep])
        self._tail = data[keep:]

    def hexdigest(self) -> str:
        if self._json is not None:
            body = b"".join(self._json)
            self._json = []
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
            self._digest.update(body)
        else:
            self._digest.update(self._tail)
            self._tail = b""
        return self._digest.hexdigest()


def request_hash(method: str, path: str, query: bytes, content_type: str, body: bytes) -> str:
    """`RequestDigest` of a whole body."""
    digest = RequestDigest(method, path, query, content_type)
    digest.update(body)
    return digest.hexdigest()


class _Spool:
    """The request body, kept to replay to the app: in memory up to `SPOOL_MEMORY_BYTES`,
    then in an unnamed temporary file (Starlette spools multipart files the same way),
    which is written and read off the event loop."""

    def __init__(self, file: SpooledTemporaryFile[bytes]) -> None:
        self._file = file
        self.size = 0
        self._replayed = 0

    def _on_disk(self, size: int) -> bool:
        return size > SPOOL_MEMORY_BYTES  # when SpooledTemporaryFile rolls over

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._on_disk(self.size):  # the write that rolls over copies the memory to disk
            await anyio.to_thread.run_sync(self._file.write, chunk)
        else:
            self._file.write(chunk)

    async def next_message(self) -> Message:
        """The body's next chunk for the app, as the server would have sent it."""
        if self._replayed == 0:
            self._file.seek(0)
        size = min(REPLAY_CHUNK_BYTES, self.size - self._replayed)
        if self._on_disk(self.size):
            chunk = await anyio.to_thread.run_sync(self._file.read, size)
        else:
            chunk = self._file.read(size)
        self._replayed += len(chunk)
        more = bool(chunk) and self._replayed < self.size
        return {"type": "http.request", "body": chunk, "more_body": more}


@dataclass(frozen=True)
class Stored:
    status_code: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key: exactly one of the fields tells what to do."""

    token: str | None = None
    """We own the key: run the request, then `complete` or `release` with this token."""
    job_id: str = ""
    """The id of the job this key's request creates: kept across a takeover of a stale
    claim of the same request, so a retry never makes a second job."""
    replay: Stored | None = None
    mismatch: bool = False
    in_progress: bool = False


async def claim(
    pool: asyncpg.Pool, user_id: str, key: str, digest: str, ttl_s: int, pending_s: float
) -> Claim:
    token = secrets.token_hex(8)
    async with pool.acquire() as conn:
        for _ in range(3):
            # Expired keys and abandoned claims are taken over; anything else is a conflict.
            # An abandoned claim of the same request keeps its job id: its transaction may
            # have sent the command before it died (idempotent_jobs.py).
            claimed = await conn.fetchval(
                "INSERT INTO idempotency_keys"
                " (user_id, key, request_hash, claim, expires_at, job_id)"
                " VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5), $7)"
                " ON CONFLICT (user_id, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
                "  claim = EXCLUDED.claim, state = 'pending', status_code = NULL,"
                "  headers = NULL, body = NULL, created_at = clock_timestamp(),"
                "  expires_at = EXCLUDED.expires_at,"
                "  job_id = CASE WHEN idempotency_keys.expires_at >= clock_timestamp()"
                "   AND idempotency_keys.request_hash = EXCLUDED.request_hash"
                "   THEN coalesce(idempotency_keys.job_id, EXCLUDED.job_id)"
                "   ELSE EXCLUDED.job_id END"
                " WHERE idempotency_keys.expires_at < clock_timestamp()"
                "  OR (idempotency_keys.state = 'pending'"
                "   AND idempotency_keys.created_at"
                "    < clock_timestamp() - make_interval(secs => $6))"
                " RETURNING job_id",
                user_id,
                key,
                digest,
                token,
                float(ttl_s),
                pending_s,
                str(uuid.uuid4()),
            )
            if claimed:
                await conn.execute(
                    "DELETE FROM idempotency_keys WHERE user_id = $1"
                    " AND expires_at < clock_timestamp()",
                    user_id,
                )
                return Claim(token=token, job_id=claimed)
            row = await conn.fetchrow(
                "SELECT request_hash, state, status_code, headers, body FROM idempotency_keys"
                " WHERE user_id = $1 AND key = $2",
                user_id,
                key,
            )
            if row is None:
                continue  # released between our two statements: try to claim again
            if row["request_hash"] != digest:
                return Claim(mismatch=True)
            if row["state"] != "done":
                return Claim(in_progress=True)
            headers = [(str(k), str(v)) for k, v in json.loads(row["headers"])]
            return Claim(replay=Stored(row["status_code"], headers, bytes(row["body"])))
    return Claim(in_progress=True)


async def complete(
    pool: asyncpg.Pool, user_id: str, key: str, token: str, response: Stored
) -> None:
    await pool.execute(
        "UPDATE idempotency_keys SET state = 'done', status_code = $4, headers = $5::jsonb,"
        " body = $6 WHERE user_id = $1 AND key = $2 AND claim = $3",
        user_id,
        key,
        token,
        response.status_code,
        json.dumps(response.headers),
        response.body,
    )


async def release(pool: asyncpg.Pool, user_id: str, key: str, token: str) -> None:
    """Give the key up for the next request to claim at once, unless the route's transaction
    recorded its answer (a job made). The row stays, as an abandoned claim, for its job id:
    a command may have reached the broker before the route failed (idempotent_jobs.py)."""
    await pool.execute(
        "UPDATE idempotency_keys SET claim = '', created_at = '-infinity'"
        " WHERE user_id = $1 AND key = $2 AND claim = $3 AND state = 'pending'",
        user_id,
        key,
        token,
    )


def _problem(status_code: int, msg: str, kind: str, headers: dict[str, str]) -> Stored:
    body = {"detail": [{"loc": ["header", HEADER], "msg": msg, "type": kind}]}
    all_headers = {"content-type": "application/json", **headers}
    return Stored(status_code, list(all_headers.items()), json.dumps(body).encode())


async def _send(send: Send, response: Stored, extra: dict[str, str] | None = None) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(response.body)).encode()))
    for k, v in (extra or {}).items():
        headers.append((k.encode(), v.encode()))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


class IdempotencyMiddleware:
    """See the module docstring. Needs `app.state.gateway` (pool, settings) and
    `app.state.authenticator`, both set before requests arrive."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = headers.get(HEADER.lower())
        if key is None:
            await self.app(scope, receive, send)
            return
        if not _KEY.match(key):
            msg = "must be 1-255 printable ASCII characters without spaces (e.g. a UUID)"
            await _send(send, _problem(422, msg, "value_error", {}))
            return
        principal = await self._principal(scope, headers.get("authorization", ""))
        if principal is None:
            await self.app(scope, receive, send)  # the route answers 401
            return
        await self._run(scope, receive, send, principal, key, headers.get("content-type", ""))

    async def _principal(self, scope: Scope, authorization: str) -> Any:
        from services.gateway.auth import InvalidTokenError

        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            principal = await scope["app"].state.authenticator.verify(token.strip())
        except InvalidTokenError:
            return None
        # Spare the route a second verification of the same token.
        scope.setdefault("state", {})["principal"] = (token.strip(), principal)
        return principal

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, principal: Any, key: str, ctype: str
    ) -> None:
        # Closed on every way out; not awaited, so a cancelled request closes it too
        # (closing the unlinked file does no disk I/O worth a thread).
        with SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as file:
            await self._spooled(scope, receive, send, principal, key, ctype, _Spool(file))

    async def _spooled(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Any,
        key: str,
        ctype: str,
        spool: _Spool,
    ) -> None:
        state = scope["app"].state.gateway
        settings, pool = state.settings, state.pool
        digest = RequestDigest(scope["method"], scope["path"], scope["query_string"], ctype)
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # also how BodyLimitMiddleware cuts a body off: nothing is claimed
            chunk = message.get("body", b"")
            digest.update(chunk)
            await spool.write(chunk)
            more = message.get("more_body", False)
        user_id = principal.user_id
        outcome = await claim(
            pool,
            user_id,
            key,
            digest.hexdigest(),
            settings.idempotency_ttl_s,
            settings.idempotency_pending_s,
        )
        if outcome.replay is not None:
            log.info("event=idempotent_replay user_id=%s key=%s", user_id, key)
            await _send(send, outcome.replay, {"idempotent-replayed": "true"})
            return
        if outcome.mismatch:
            msg = "this key was already used with a different request; use a new key"
            await _send(send, _problem(422, msg, "idempotency_mismatch", {}))
            return
        if outcome.in_progress or outcome.token is None:
            msg = "a request with this key is still in progress; retry shortly"
            await _send(send, _problem(409, msg, "idempotency_in_progress", {"retry-after": "1"}))
            return
        scope.setdefault("state", {})[SCOPE_KEY] = ClaimedKey(
            user_id, key, outcome.token, outcome.job_id
        )
        await self._claimed(scope, receive, spool, send, pool, user_id, key, outcome.token)

    async def _claimed(
        self,
        scope: Scope,
        receive: Receive,
        spool: _Spool,
        send: Send,
        pool: asyncpg.Pool,
        user_id: str,
        key: str,
        token: str,
    ) -> None:
        replayed = False

        async def replay_body() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: only a disconnect can come
            message = await spool.next_message()
            replayed = not message["more_body"]
            return message

        start: Message | None = None
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        try:
            await self.app(scope, replay_body, capture)
        except BaseException:
            await release(pool, user_id, key, token)
            raise
        await fault_point(scope, "route_returned")
        assert start is not None
        response = Stored(
            start["status"],
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])],
            b"".join(parts),
        )
        # Kept before the client sees it: whoever saw this response can replay it.
        if _keep(response.status_code):
            await complete(pool, user_id, key, token, response)
        else:
            await release(pool, user_id, key, token)
        await _send(send, response)


FaultHook = Callable[[str], Awaitable[None]]
"""`app.state.idempotency_fault`, when set (tests only): awaited at named points of a
claimed request - "route_returned": the route has answered (its transaction committed), the
answer is not stored yet - to play a crash there by raising."""


async def fault_point(scope: Scope, name: str) -> None:
    hook: FaultHook | None = getattr(scope["app"].state, "idempotency_fault", None)
    if hook is not None:
        await hook(name)


def _document_key(
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description=(
                "Optional. Retrying with the same key and body returns the first response"
                " (header Idempotent-Replayed: true) without doing the work twice; the same"
                " key with a different body is refused (422). Keys last 24 h, per user."
            ),
            examples=["6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"],
            max_length=255,
        ),
    ] = None,
) -> None:
    """Declares the header in the OpenAPI document; the middleware does the work."""


IdempotencyKey = Depends(_document_key)
"""For POST routes: `@router.post(..., dependencies=[IdempotencyKey])`."""
