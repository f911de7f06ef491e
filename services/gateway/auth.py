"""Bearer JWTs: HS256 with the gateway's secret, or RS256/ES256 from an identity provider's
JWKS URL; short-lived HS256 stream tokens for EventSource.

`issue_token` and `verify_token` are plain HS256 functions (the `imagegen token` CLI and
the stream-token route use them). `Authenticator` verifies access tokens of either kind:
a token whose header says HS256 is checked with the secret, any other algorithm with the
signing key the JWKS names by `kid` (fetched off the event loop, cached). Two keys, two
algorithm families: an RS256 public key can never be used as an HS256 secret.

`CurrentUser` (rate-limited on the "api" bucket) and `StreamUser` are the dependencies.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from imagegen.errors import PermanentError
from schemas.requests import UserTier
from services.gateway.settings import GatewaySettings

ALGORITHM = "HS256"
STREAM_SCOPE = "stream"


class InvalidTokenError(PermanentError):
    """A token that is missing, expired, badly signed or not meant for this use."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    tier: UserTier


def _secret(secret: str | SecretStr) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def issue_token(
    secret: str | SecretStr,
    user: str,
    tier: UserTier | str,
    ttl: int,
    *,
    scope: str | None = None,
) -> str:
    """A signed token for `user` valid for `ttl` seconds."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": user,
        "tier": UserTier(tier).value,
        "iat": now,
        "exp": now + timedelta(seconds=ttl),
    }
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(claims, _secret(secret), algorithm=ALGORITHM)


def _decode(token: str, key: Any, algorithms: list[str], **options: Any) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=algorithms, options={"require": ["sub", "exp"]}, **options
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidTokenError("token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidTokenError("token signature is invalid") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidTokenError(f"token is invalid: {exc}") from exc
    return claims


def _principal(claims: dict[str, Any], scope: str | None) -> Principal:
    token_scope = claims.get("scope")
    if token_scope != scope:
        if token_scope == STREAM_SCOPE:
            raise InvalidTokenError(
                "stream tokens are accepted only as ?stream_token= on event streams"
            )
        raise InvalidTokenError(f"token scope {token_scope!r} is not valid here")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject.isprintable() or not 0 < len(subject) <= 200:
        raise InvalidTokenError("token has no valid 'sub' claim")
    try:
        tier = UserTier(str(claims.get("tier")))
    except ValueError as exc:
        raise InvalidTokenError("token has no valid 'tier' claim (paid or free)") from exc
    return Principal(user_id=subject, tier=tier)


def verify_token(secret: str | SecretStr, token: str, *, scope: str | None = None) -> Principal:
    """An HS256 token's principal; `scope` must match the token's (None: an access token)."""
    return _principal(_decode(token, _secret(secret), [ALGORITHM]), scope)


class Authenticator:
    """Verifies access tokens: HS256 with the secret, others against the JWKS (if set)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._jwks: jwt.PyJWKClient | None = None
        if settings.jwks_url:
            # No I/O here: the client fetches the key set on first use and caches it.
            self._jwks = jwt.PyJWKClient(
                settings.jwks_url,
                cache_keys=True,
                lifespan=settings.jwks_cache_s,
                timeout=10,
            )

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise InvalidTokenError(f"token is invalid: {exc}") from exc
        algorithm = header.get("alg")
        if algorithm == ALGORITHM:
            return verify_token(self._settings.jwt_secret, token)
        if self._jwks is None or algorithm not in self._settings.jwt_jwks_algorithms:
            raise InvalidTokenError(f"token algorithm {algorithm!r} is not accepted")
        try:
            # PyJWKClient fetches with urllib (blocking): keep it off the event loop.
            signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError as exc:
            raise InvalidTokenError("cannot fetch the identity provider's keys (JWKS)") from exc
        except jwt.PyJWKClientError as exc:
            raise InvalidTokenError(f"token signing key not found in JWKS: {exc}") from exc
        options: dict[str, Any] = {}
        if self._settings.jwt_audience:
            options["audience"] = self._settings.jwt_audience
        if self._settings.jwt_issuer:
            options["issuer"] = self._settings.jwt_issuer
        claims = _decode(token, signing.key, [str(algorithm)], **options)
        return _principal(claims, None)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.authenticator
    return auth


_bearer = HTTPBearer(auto_error=False)
_STREAM_TOKEN_DOC = "A token from POST /api/v1/stream-tokens (EventSource cannot send headers)"  # noqa: S105 - a description
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
AuthenticatorDep = Annotated[Authenticator, Depends(authenticator)]


async def _from_bearer(
    request: Request, auth: AuthenticatorDep, credentials: BearerDep
) -> Principal:
    if credentials is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    # The idempotency middleware may have verified this very token already.
    cached = getattr(request.state, "principal", None)
    if cached is not None and cached[0] == credentials.credentials:
        principal: Principal = cached[1]
        return principal
    try:
        return await auth.verify(credentials.credentials)
    except InvalidTokenError as exc:
        raise _unauthorized(str(exc)) from exc


async def _from_stream_token(
    request: Request,
    auth: AuthenticatorDep,
    credentials: BearerDep,
    stream_token: Annotated[str | None, Query(description=_STREAM_TOKEN_DOC)] = None,
) -> Principal:
    if stream_token is None:
        return await _from_bearer(request, auth, credentials)
    settings: GatewaySettings = request.app.state.gateway.settings
    try:
        return verify_token(settings.jwt_secret, stream_token, scope=STREAM_SCOPE)
    except InvalidTokenError as exc:
        raise _unauthorized(f"stream_token: {exc}") from exc


AuthenticatedUser = Annotated[Principal, Depends(_from_bearer)]
StreamUser = Annotated[Principal, Depends(_from_stream_token)]


async def _limited(request: Request, user: AuthenticatedUser) -> Principal:
    from services.gateway.ratelimit import enforce

    await enforce(request, user, "api")
    return user


CurrentUser = Annotated[Principal, Depends(_limited)]
"""The caller, authenticated and counted against their tier's "api" rate limit."""
