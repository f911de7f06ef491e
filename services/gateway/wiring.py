"""Cross-cutting pieces the app factory installs: token verification, moderation, request
size limits and the idempotency middleware. Nothing here does I/O; the lifespan closes the
moderator."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen.logging_setup import annotate
from services.gateway.auth import Authenticator, InvalidTokenError, Principal
from services.gateway.idempotency import IdempotencyMiddleware
from services.gateway.moderation import Moderator, build_moderator
from services.gateway.settings import GatewaySettings

MAX_JSON_BYTES = 2 * 1024 * 1024
"""A 100-page story of long pages is well under this; nothing JSON needs more."""


class BodyLimitMiddleware:
    """413 for bodies over the limit before anyone buffers or parses them: multipart
    uploads get `upload_bytes` (a character's LoRA upload, `PUT .../lora`, gets
    `lora_bytes`), everything else `MAX_JSON_BYTES`. Multipart bodies are
    read only for a caller whose bearer token verifies (401 from the headers otherwise).

    A declared Content-Length over the limit is refused from the headers. Every other body
    flows on to the app chunk by chunk as it arrives, counted on the way (a declared length
    is not trusted to frame it): nothing here holds more than one chunk."""

    def __init__(self, app: ASGIApp, upload_bytes: int, lora_bytes: int | None = None) -> None:
        self.app = app
        self.upload_bytes = upload_bytes
        self.lora_bytes = lora_bytes if lora_bytes is not None else upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        multipart = headers.get("content-type", "").startswith("multipart/")
        lora = scope["method"] == "PUT" and scope["path"].rstrip("/").endswith("/lora")
        limit = (self.lora_bytes if lora else self.upload_bytes) if multipart else MAX_JSON_BYTES
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        if multipart:
            # FastAPI parses (and spools) a form before any dependency runs: without this,
            # anyone could make us take a full upload only to be told 401 afterwards.
            refusal = await _unverified(scope, headers.get("authorization", ""))
            if refusal is not None:
                await _problem(
                    send, 401, refusal, {"www-authenticate": 'Bearer error="invalid_token"'}
                )
                return
        body = _CountedBody(receive, send, limit)
        try:
            await self.app(scope, body.receive, body.send)
        except ClientDisconnect:
            # Raised by a Request that read the end we made up; the client has its answer.
            if not body.cut_off:
                raise


class _CountedBody:
    """`receive` and `send` for the app: body chunks pass through as they arrive while
    their bytes are counted. The chunk that takes the count past `limit` is not passed on:
    the client gets the 413 (unless a response has started, which then goes on) and the
    app is told the client left (`http.disconnect`, from then on). Starlette's `Request`
    turns that into `ClientDisconnect`, which its multipart parser meets by closing the
    files it spooled and FastAPI by a 400 that is dropped here, as is anything else the
    app answers after the 413."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.received = 0
        self.cut_off = False
        self.refused = False
        self.started = False

    async def receive(self) -> Message:
        if self.cut_off:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] != "http.request":
            return message
        self.received += len(message.get("body", b""))
        if self.received <= self.limit:
            return message
        self.cut_off = True
        if not self.started:
            self.refused = True  # before the await: an answer the app sends meanwhile is dropped
            await _too_large(self._send, self.limit)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


async def _too_large(send: Send, limit: int) -> None:
    problem = {
        "loc": ["body"],
        "msg": f"request body larger than {limit} bytes",
        "type": "too_large",
    }
    await _problem(send, 413, [problem])


async def _problem(
    send: Send, status: int, detail: object, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _unverified(scope: Scope, authorization: str) -> str | None:
    """Why the request's bearer token is refused, or None when it verifies (the principal
    is kept for the route, as the idempotency middleware does)."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return "missing bearer token: send 'Authorization: Bearer <token>'"
    try:
        principal = await scope["app"].state.authenticator.verify(token)
    except InvalidTokenError as exc:
        return str(exc)
    scope.setdefault("state", {})["principal"] = (token, principal)
    return None


ECHO_LIMIT = 200
"""At most this many characters of an offending input are echoed back in a 422."""


def _clipped(value: Any) -> Any:
    """An echoed input cut to `ECHO_LIMIT` characters (a 100 kB name is not sent back)."""
    if isinstance(value, str) and len(value) > ECHO_LIMIT:
        return f"{value[:ECHO_LIMIT]}… ({len(value)} characters)"
    if isinstance(value, (bytes, bytearray)) and len(value) > ECHO_LIMIT:
        return f"{bytes(value[:ECHO_LIMIT])!r}… ({len(value)} bytes)"
    if isinstance(value, list):
        return [_clipped(v) for v in value[:20]] + (["…"] if len(value) > 20 else [])
    if isinstance(value, dict):
        items = list(value.items())
        clipped = {str(k)[:ECHO_LIMIT]: _clipped(v) for k, v in items[:20]}
        return clipped | ({"…": f"{len(items) - 20} more keys"} if len(items) > 20 else {})
    return value


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422, rendered ASCII-safe (an echoed input holding a lone surrogate must
    not turn a refusal into a 500) and short: echoed inputs are clipped."""
    assert isinstance(exc, RequestValidationError)
    errors = [{**e, "input": _clipped(e["input"])} if "input" in e else e for e in exc.errors()]
    detail = jsonable_encoder(errors, custom_encoder={BaseException: str})
    body = json.dumps({"detail": detail}, ensure_ascii=True, default=str)
    return Response(body, status_code=422, media_type="application/json")


_BODY_ERRORS = {
    "400": "The body cannot be decoded (e.g. JSON that is not UTF-8, a broken multipart body)",
    "413": "The request body is larger than the limit (the message says which)",
}


def document_body_errors(app: FastAPI) -> None:
    """Every operation that takes a body may answer 400 (FastAPI cannot decode it) or 413
    (BodyLimitMiddleware): say so in the OpenAPI document, once, where it is built."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        error = {"$ref": "#/components/schemas/ErrorResponse"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "requestBody" not in operation:
                    continue
                for code, description in _BODY_ERRORS.items():
                    operation["responses"].setdefault(
                        code,
                        {
                            "description": description,
                            "content": {"application/json": {"schema": error}},
                        },
                    )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class _NamingAuthenticator(Authenticator):
    """Puts the verified caller's id in the request's log context."""

    async def verify(self, token: str) -> Principal:
        principal = await super().verify(token)
        annotate(user_id=principal.user_id)
        return principal


def install(app: FastAPI, settings: GatewaySettings, moderator: Moderator | None = None) -> None:
    """Attach the authenticator and moderator to `app.state`, add the middleware."""
    app.state.authenticator = _NamingAuthenticator(settings)
    app.state.moderator = moderator or build_moderator(settings)
    app.add_exception_handler(RequestValidationError, validation_error)
    document_body_errors(app)
    app.add_middleware(IdempotencyMiddleware)
    # Added last, so it runs first: nothing is buffered before the size is known.
    photos = settings.reference_max_photos * settings.reference_max_bytes
    form = 1024 * 1024  # the form's own fields and boundaries
    app.add_middleware(
        BodyLimitMiddleware, upload_bytes=photos + form, lora_bytes=settings.lora_max_bytes + form
    )
