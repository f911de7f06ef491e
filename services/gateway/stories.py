"""Stories: a title, pages (text, optional scene description, who is on the page) and a cast.

The cast (`characterIds`) must be the user's own characters, and each page's characters
must come from the cast; anything else is refused naming the field. `get` is the story as
the API shows it; `load_spec` is the `StorySpec` contract (with each cast member's
`CharacterSpec`) that generate-all publishes.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import TypeAlias

import asyncpg

from schemas.requests import StoryPage, StorySpec
from services.gateway import characters
from services.gateway.models import Story, StoryCreate, StoryPageIn, StoryPageOut, StoryUpdate
from services.gateway.problems import field_error

_COLUMNS = "id, title, pages, character_ids, created_at, updated_at"

Db: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


def _story(row: asyncpg.Record) -> Story:
    return Story(
        id=row["id"],
        title=row["title"],
        pages=[StoryPageOut.model_validate(p) for p in json.loads(row["pages"])],
        character_ids=json.loads(row["character_ids"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _pages_json(pages: list[StoryPageIn]) -> str:
    ordered = sorted(pages, key=lambda p: p.page_number)
    return json.dumps([p.model_dump(mode="json", by_alias=True) for p in ordered])


async def check_cast(
    conn: asyncpg.Connection, user_id: str, cast: list[str], pages: list[StoryPageIn]
) -> None:
    """Refuse (422 naming the field) unknown or foreign characters, duplicates, and pages
    whose characters are not in the cast. Share-locks the cast so that none of them can be
    deleted before this transaction commits."""
    seen: set[str] = set()
    for i, ident in enumerate(cast):
        if ident in seen:
            raise field_error(("body", "characterIds", i), f"character {ident} is listed twice")
        seen.add(ident)
    rows = await conn.fetch(
        "SELECT id FROM characters WHERE id = ANY($1::text[]) AND user_id = $2 FOR SHARE",
        cast,
        user_id,
    )
    found = {row["id"] for row in rows}
    for i, ident in enumerate(cast):
        if ident not in found:
            raise field_error(("body", "characterIds", i), f"character {ident} not found")
    numbers: set[int] = set()
    for p, page in enumerate(pages):
        if page.page_number in numbers:
            raise field_error(
                ("body", "pages", p, "pageNumber"), f"page {page.page_number} appears twice"
            )
        numbers.add(page.page_number)
        for c, ident in enumerate(page.character_ids):
            if ident not in seen:
                raise field_error(
                    ("body", "pages", p, "characterIds", c),
                    f"character {ident} is not in the story's characterIds",
                )


async def create(conn: asyncpg.Connection, user_id: str, body: StoryCreate) -> Story:
    """Insert after `check_cast` (call both in one transaction)."""
    row = await conn.fetchrow(
        "INSERT INTO stories (id, user_id, title, pages, character_ids)"
        f" VALUES ($1, $2, $3, $4::jsonb, $5::jsonb) RETURNING {_COLUMNS}",
        str(uuid.uuid4()),
        user_id,
        body.title,
        _pages_json(body.pages),
        json.dumps(body.character_ids),
    )
    assert row is not None
    return _story(row)


async def get(db: Db, user_id: str, story_id: str, *, for_update: bool = False) -> Story | None:
    """The user's story, or None (also when it is someone else's)."""
    lock = " FOR UPDATE" if for_update else ""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM stories WHERE id = $1 AND user_id = $2{lock}", story_id, user_id
    )
    return _story(row) if row is not None else None


async def list_for(
    db: Db, user_id: str, limit: int, after: tuple[datetime, str] | None = None
) -> list[Story]:
    """Newest first; `after` is the (created_at, id) of the previous page's last row."""
    if after is None:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM stories WHERE user_id = $1"
            " ORDER BY created_at DESC, id DESC LIMIT $2",
            user_id,
            limit,
        )
    else:
        rows = await db.fetch(
            f"SELECT {_COLUMNS} FROM stories WHERE user_id = $1 AND (created_at, id) < ($3, $4)"
            " ORDER BY created_at DESC, id DESC LIMIT $2",
            user_id,
            limit,
            *after,
        )
    return [_story(row) for row in rows]


def merged(story: Story, patch: StoryUpdate) -> StoryCreate:
    """The story as the patch would leave it, validated like a new one."""
    current = StoryCreate(
        title=story.title,
        pages=[StoryPageIn.model_validate(p.model_dump()) for p in story.pages],
        character_ids=story.character_ids,
    )
    return current.model_copy(
        update={name: getattr(patch, name) for name in patch.model_fields_set}
    )


async def update(conn: asyncpg.Connection, user_id: str, story_id: str, body: StoryCreate) -> Story:
    row = await conn.fetchrow(
        "UPDATE stories SET title = $3, pages = $4::jsonb, character_ids = $5::jsonb,"
        f" updated_at = clock_timestamp() WHERE id = $1 AND user_id = $2 RETURNING {_COLUMNS}",
        story_id,
        user_id,
        body.title,
        _pages_json(body.pages),
        json.dumps(body.character_ids),
    )
    assert row is not None
    return _story(row)


async def delete(db: Db, user_id: str, story_id: str) -> bool:
    result = await db.execute(
        "DELETE FROM stories WHERE id = $1 AND user_id = $2", story_id, user_id
    )
    return bool(result.endswith(" 1"))


async def load_spec(db: Db, user_id: str, story_id: str) -> StorySpec | None:
    """The user's story as the StorySpec contract (cast as CharacterSpecs, pages in order),
    or None when the user has no such story."""
    story = await get(db, user_id, story_id)
    if story is None:
        return None
    cast = await characters.get_many(db, user_id, story.character_ids)
    return StorySpec(
        id=story.id,
        title=story.title,
        pages=[
            StoryPage(
                page_number=p.page_number,
                text=p.text,
                scene_description=p.scene_description,
                character_ids=p.character_ids,
            )
            for p in story.pages
        ],
        # Cast members are share-locked against deletion while a story names them.
        characters=[characters.to_spec(cast[i]) for i in story.character_ids if i in cast],
    )
