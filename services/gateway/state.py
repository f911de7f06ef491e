"""What the lifespan opens and every request reads: one container, no globals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.kafka import ConsumerLoop, Publisher
from services.gateway.eventfeed import EventFeed
from services.gateway.notify import EventSignal
from services.gateway.projection import Projection
from services.gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    pool: asyncpg.Pool
    blobs: BlobStore
    publisher: Publisher
    signal: EventSignal
    feed: EventFeed
    """The event log as the SSE streams read it (kept from the commits' notes)."""
    consumer_loop: ConsumerLoop
    consumer_task: asyncio.Task[None]
    projection: Projection
    """Projects the events topic; hands its commits' notes to `feed`."""
    cdn_signer: Callable[[str], str] | None = None

    @property
    def consumer_running(self) -> bool:
        return not self.consumer_task.done() and not self.consumer_loop.stopping

    @property
    def consumer_failure(self) -> str | None:
        """Why the events consumer ended when nobody asked it to stop; None while it runs.

        A gateway whose consumer died serves a frozen read model: liveness fails so the
        orchestrator replaces the process instead of leaving it ready-looking forever.
        """
        task = self.consumer_task
        if not task.done() or self.consumer_loop.stopping:
            return None
        if task.cancelled():
            return "the events consumer was cancelled"
        error = task.exception()
        return f"the events consumer ended: {error!r}" if error else "the events consumer ended"
