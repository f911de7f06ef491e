"""What the lifespan opens and every request reads: one container, no globals."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg

from imagegen.blobstore import BlobStore
from imagegen.kafka import ConsumerLoop, Publisher
from services.gateway.notify import EventSignal
from services.gateway.settings import GatewaySettings


@dataclass
class GatewayState:
    settings: GatewaySettings
    pool: asyncpg.Pool
    blobs: BlobStore
    publisher: Publisher
    signal: EventSignal
    consumer_loop: ConsumerLoop
    consumer_task: asyncio.Task[None]

    @property
    def consumer_running(self) -> bool:
        return not self.consumer_task.done() and not self.consumer_loop.stopping
