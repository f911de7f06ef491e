"""An image whose renditions postprocess wrote to their final keys is admitted and stored in
one statement (one round trip): the same outcomes as the two-step path with staged
renditions. On real SeaweedFS and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import pytest

from schemas.events import EVENT_ADAPTER, ImageDeleted, ImageStored
from schemas.requests import DeleteCharacter, DeleteImage, JobKind
from services.storage.handlers import StorageService
from tests.integration.test_storage_discard import _identity, at_final_keys
from tests.integration.test_storage_owners import TOPICS, Storage, _record, storage

pytestmark = pytest.mark.integration
__all__ = ["storage"]  # the fixture, imported


class _Counting:
    """A pool whose connections count the statements sent through them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.statements: list[str] = []

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self._pool.acquire() as conn:
            yield _CountingConnection(conn, self.statements)


class _CountingConnection:
    def __init__(self, conn: asyncpg.Connection, statements: list[str]) -> None:
        self._conn = conn
        self._statements = statements

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)
        if name not in {"fetch", "fetchrow", "fetchval", "execute"}:
            return method

        async def counted(query: str, *args: Any) -> Any:
            self._statements.append(query)
            return await method(query, *args)

        return counted


def _events(storage: Storage) -> list[ImageStored | ImageDeleted]:
    events = [EVENT_ADAPTER.validate_json(r.value) for r in storage.broker.records(TOPICS.events)]
    return [e for e in events if isinstance(e, (ImageStored, ImageDeleted))]


async def test_a_fresh_image_is_admitted_and_stored_in_one_statement(storage: Storage) -> None:
    counting = _Counting(storage.pool)
    service = StorageService(
        cast(asyncpg.Pool, counting), storage.blobs, storage.broker.publisher(), TOPICS
    )
    reference = _identity("ref").model_copy(update={"kind": JobKind.REFERENCE})
    msg = await at_final_keys(storage, reference)
    await service.on_processed_image(_record(msg))

    assert len(counting.statements) == 1
    assert await storage.rows() == {("ref", 1)}
    # The reference row is written by the same statement.
    assert (
        await storage.pool.fetchval(
            "SELECT count(*) FROM character_references WHERE image_id = 'ref'"
        )
        == 1
    )
    [stored] = _events(storage)
    assert isinstance(stored, ImageStored)
    assert stored.data.cost_usd == 0.01 and stored.data.kind == JobKind.REFERENCE.value
    assert [r.key for r in stored.data.renditions] == [r.blob.key for r in msg.renditions]


async def test_a_second_copy_repeats_what_was_stored(storage: Storage) -> None:
    image = _identity("twice")
    await storage.service.on_processed_image(_record(await at_final_keys(storage, image)))
    await storage.service.on_processed_image(_record(await at_final_keys(storage, image, cost=0.5)))

    assert await storage.rows() == {("twice", 1)}
    first, second = _events(storage)
    assert isinstance(first, ImageStored) and isinstance(second, ImageStored)
    assert first.id == second.id
    assert second.data.cost_usd == 0.01  # the stored copy's, not the second copy's


async def test_a_deleted_images_late_version_is_thrown_away(storage: Storage) -> None:
    await storage.service.on_processed_image(
        _record(await at_final_keys(storage, _identity("gone")))
    )
    await storage.request(DeleteImage(image_id="gone", user_id="u1"))
    late = await at_final_keys(storage, _identity("gone", version=2))
    await storage.service.on_processed_image(_record(late))

    assert await storage.rows() == set()
    for rendition in late.renditions:
        assert not await storage.blobs.exists(rendition.blob.key), rendition.blob.key
    deleted = [e for e in _events(storage) if isinstance(e, ImageDeleted)]
    assert [e.data.versions for e in deleted] == [[1], [2]]


async def test_a_deleted_owners_late_image_is_thrown_away(storage: Storage) -> None:
    await storage.request(DeleteCharacter(character_id="c1", user_id="u1"))
    late = await at_final_keys(storage, _identity("orphan"))
    await storage.service.on_processed_image(_record(late))

    assert await storage.rows() == set()
    for rendition in late.renditions:
        assert not await storage.blobs.exists(rendition.blob.key), rendition.blob.key
    assert [
        (e.data.image_id, e.data.versions) for e in _events(storage) if isinstance(e, ImageDeleted)
    ] == [("orphan", [1])]
    assert not [e for e in _events(storage) if isinstance(e, ImageStored)]
