"""Helpers for the resources tests: a gateway with settings overrides, upload bodies."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka import Publisher
from imagegen.kafka.memory import InMemoryBroker
from services.gateway.app import create_app
from tests.unit.gateway.conftest import Gateway, gateway_settings

FACE_JPEG = (Path(__file__).parent / "data" / "face.jpg").read_bytes()
"""A 256x256 DCGAN face in which dlib's HOG detector finds one face."""


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 64), colour: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


@asynccontextmanager
async def custom_gateway(
    database_url: str,
    *,
    publisher: Publisher | None = None,
    blobs: Any = None,
    broker: InMemoryBroker | None = None,
    **overrides: Any,
) -> AsyncIterator[Gateway]:
    broker = broker or InMemoryBroker()
    store = blobs if blobs is not None else InMemoryBlobStore()
    base = gateway_settings(database_url)
    settings = type(base).model_validate({**dict(base), **overrides})
    app = create_app(
        settings,
        publisher=publisher or broker.publisher(),
        consumer_factory=broker.consumer,
        blob_store=store,
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client,
    ):
        yield Gateway(app, client, broker, store, settings)


def published(gateway: Gateway) -> list[Any]:
    """Every command on the requests topic so far, decoded."""
    from schemas.requests import REQUEST_ADAPTER

    return [
        REQUEST_ADAPTER.validate_json(record.value)
        for record in gateway.broker.records(gateway.topics.requests)
    ]
