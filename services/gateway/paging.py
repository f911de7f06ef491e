"""Opaque keyset cursors: (created_at, id) of the last row of a page, newest first.

Keyset rather than offset paging: rows added while a client pages never shift the
pages it has not read yet.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated

from fastapi import HTTPException, Query, status

Cursor = tuple[datetime, str]

CursorQuery = Annotated[
    str | None,
    Query(max_length=200, description="next_cursor of the previous page; omit for the first."),
]
LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size.")]


def encode(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str | None) -> Cursor | None:
    """The cursor's position; a 422 naming `cursor` when it was not made by `encode`."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, sep, row_id = raw.partition("|")
        when = datetime.fromisoformat(stamp)
        if not sep or not row_id or when.tzinfo is None or "\x00" in row_id:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "cursor: not a cursor returned by this API (use next_cursor as is)",
        ) from exc
    return when, row_id
