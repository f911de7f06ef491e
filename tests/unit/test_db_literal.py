"""`imagegen.db.sql_literal`: text survives the round trip through a real server unchanged."""

from __future__ import annotations

import asyncpg
import pytest

from imagegen.db import sql_literal

TRICKY = [
    "",
    "it's",
    "$q0$",
    "x$q0",
    "$q0$q1$q2",
    "$$",
    "$",
    "ends with $q",
    "back\\slash \\' and \\\\",
    'json {"a": "b\\"c", "d": "$q0"}',
    "ünïcødé ✓",
    "line\nbreak\ttab",
]


async def test_text_round_trips(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for value in TRICKY:
            assert await conn.fetchval(f"SELECT {sql_literal(value)}::text") == value
        # The server's string setting does not matter to dollar quoting.
        await conn.execute("SET standard_conforming_strings = off")
        for value in TRICKY:
            assert await conn.fetchval(f"SELECT {sql_literal(value)}::text") == value
        assert await conn.fetchval(f"SELECT {sql_literal(None)}::text") is None
        assert await conn.fetchval(f"SELECT {sql_literal(-42)}") == -42
    finally:
        await conn.close()


def test_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("a\x00b")
    with pytest.raises(TypeError):
        sql_literal(True)
