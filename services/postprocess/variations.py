"""The consistency loop's memory: every scored variation of an image, to keep the best.

An image that scores below the threshold is held back while the scheduler asks for new
seed variations; on the last one, the best-scoring variation is the one stored. Rows live
in the postprocess service's own schema ("postprocess"); the processed message of each
variation is kept whole, since its renditions are already staged in object storage.
Rows older than `imagegen.retention.REPLAY_WINDOW` are pruned (`variations_pruner`).
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from imagegen.db import transient_as_retryable
from imagegen.retention import REPLAY_WINDOW, AgePruner
from schemas.images import ProcessedImage
from schemas.jobs import ImageIdentity

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE variations (
            job_id      text NOT NULL,
            image_index integer NOT NULL,
            version     integer NOT NULL,
            variation   integer NOT NULL,
            score       real NOT NULL,
            processed   jsonb NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, image_index, version, variation)
        );
        """,
    ),
    (
        2,
        """
        -- Pruned by age (imagegen.retention): a variation is only read while its image's
        -- messages can still arrive.
        CREATE INDEX variations_created_at ON variations (created_at);
        """,
    ),
]


class VariationStore(Protocol):
    """Scored variations of an image, kept until the best one is chosen."""

    async def record(self, processed: ProcessedImage, score: float) -> None: ...

    async def best(self, image: ImageIdentity) -> ProcessedImage:
        """The best-scoring recorded variation of `image` (recorded before this call)."""
        ...


class PostgresVariationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, processed: ProcessedImage, score: float) -> None:
        image = processed.image
        async with transient_as_retryable(), self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO variations (job_id, image_index, version, variation, score, processed)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                image.job_id,
                image.image_index,
                image.version,
                image.variation,
                score,
                processed.model_dump_json(),
            )

    async def best(self, image: ImageIdentity) -> ProcessedImage:
        async with transient_as_retryable(), self._pool.acquire() as conn:
            row = await conn.fetchval(
                "SELECT processed FROM variations"
                " WHERE job_id = $1 AND image_index = $2 AND version = $3"
                " ORDER BY score DESC, variation LIMIT 1",
                image.job_id,
                image.image_index,
                image.version,
            )
        return ProcessedImage.model_validate_json(row)


class InMemoryVariationStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, int, int, int], tuple[float, ProcessedImage]] = {}

    async def record(self, processed: ProcessedImage, score: float) -> None:
        i = processed.image
        self._rows.setdefault((i.job_id, i.image_index, i.version, i.variation), (score, processed))

    async def best(self, image: ImageIdentity) -> ProcessedImage:
        mine = [
            (-score, key[3], processed)
            for key, (score, processed) in self._rows.items()
            if key[:3] == (image.job_id, image.image_index, image.version)
        ]
        return min(mine, key=lambda row: (row[0], row[1]))[2]


def variations_pruner(pool: asyncpg.Pool) -> AgePruner:
    """Forgets variations once no message of their image can arrive any more."""
    return AgePruner(pool, "variations", "created_at", keep=REPLAY_WINDOW)
