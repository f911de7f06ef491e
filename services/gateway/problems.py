"""Errors that name the field at fault, in the same shape as FastAPI's own 422s.

`{"detail": [{"loc": ["body", "pages", 2, "characterIds", 0], "msg": ..., "type": ...}]}`:
a client parses one shape whether pydantic or our own checks refused the request.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status

from services.gateway.models import ErrorResponse

Loc = tuple[str | int, ...]


def field_error(
    loc: Loc,
    msg: str,
    *,
    kind: str = "value_error",
    status_code: int = status.HTTP_422_UNPROCESSABLE_CONTENT,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> HTTPException:
    """An HTTPException whose detail names `loc` (e.g. ("body", "name"))."""
    problem = {"loc": list(loc), "msg": msg, "type": kind, **extra}
    return HTTPException(status_code, detail=[problem], headers=headers)


def not_found(what: str, ident: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the error codes an endpoint can return."""
    descriptions = {
        400: "Malformed request",
        401: "Missing, expired or invalid bearer token",
        404: "Not found (or not yours)",
        409: "Conflicts with the current state (the message says which)",
        413: "Upload too large",
        422: "A field is invalid or was refused by moderation; `loc` names it",
        429: "Rate limit exceeded; retry after `Retry-After` seconds",
        503: "A dependency is unavailable; nothing was changed, retry",
    }
    return {
        code: {"model": ErrorResponse, "description": descriptions.get(code, "Error")}
        for code in codes
    }
