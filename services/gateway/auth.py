"""Bearer JWTs (HS256): access tokens for the API, short-lived stream tokens for EventSource.

`issue_token` and `verify_token` are plain functions (the `imagegen token` CLI uses them);
`CurrentUser` and `StreamUser` are the FastAPI dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Query, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from imagegen.errors import PermanentError
from schemas.requests import UserTier
from services.gateway.deps import SettingsDep

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


def verify_token(secret: str | SecretStr, token: str, *, scope: str | None = None) -> Principal:
    """The token's principal; `scope` must match the token's (None: an access token)."""
    try:
        claims = jwt.decode(
            token, _secret(secret), algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidTokenError("token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise InvalidTokenError("token signature is invalid") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidTokenError(f"token is invalid: {exc}") from exc
    token_scope = claims.get("scope")
    if token_scope != scope:
        if token_scope == STREAM_SCOPE:
            raise InvalidTokenError(
                "stream tokens are accepted only as ?stream_token= on event streams"
            )
        raise InvalidTokenError(f"token scope {token_scope!r} is not valid here")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise InvalidTokenError("token has no valid 'sub' claim")
    try:
        tier = UserTier(str(claims.get("tier")))
    except ValueError as exc:
        raise InvalidTokenError("token has no valid 'tier' claim (paid or free)") from exc
    return Principal(user_id=subject, tier=tier)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


_bearer = HTTPBearer(auto_error=False)
_STREAM_TOKEN_DOC = "A token from POST /api/v1/stream-tokens (EventSource cannot send headers)"  # noqa: S105 - a description
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _from_bearer(settings: SettingsDep, credentials: BearerDep) -> Principal:
    if credentials is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    try:
        return verify_token(settings.jwt_secret, credentials.credentials)
    except InvalidTokenError as exc:
        raise _unauthorized(str(exc)) from exc


def _from_stream_token(
    settings: SettingsDep,
    credentials: BearerDep,
    stream_token: Annotated[
        str | None, Query(description="A token from /api/v1/stream-tokens")
    ] = None,
) -> Principal:
    if stream_token is None:
        return _from_bearer(settings, credentials)
    try:
        return verify_token(settings.jwt_secret, stream_token, scope=STREAM_SCOPE)
    except InvalidTokenError as exc:
        raise _unauthorized(f"stream_token: {exc}") from exc


CurrentUser = Annotated[Principal, Depends(_from_bearer)]
StreamUser = Annotated[Principal, Depends(_from_stream_token)]
