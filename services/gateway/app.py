"""The gateway's app factory: resources opened in the lifespan, injectable for tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from imagegen import db
from imagegen.blobstore import BlobStore, S3BlobStore
from imagegen.kafka import Consumer, ConsumerLoop, Publisher
from imagegen.retention import AgePruner, pruning
from imagegen.runtime import kafka_consumer, kafka_publisher
from imagegen.telemetry_asgi import TelemetryMiddleware
from services.gateway import cdn
from services.gateway.docs import install_docs
from services.gateway.eventfeed import EventFeed
from services.gateway.migrations import MIGRATIONS, SCHEMA
from services.gateway.notify import EventSignal, PgEventSignal
from services.gateway.projection import Projection
from services.gateway.routes import (
    characters,
    generation,
    health,
    images,
    jobs,
    loras,
    references,
    stories,
    streams,
    tokens,
)
from services.gateway.settings import GatewaySettings
from services.gateway.state import GatewayState
from services.gateway.webhooks.wiring import build_dispatcher
from services.gateway.wiring import install

log = logging.getLogger(__name__)

CONSUMER_GROUP = "gateway"
STATIC_DIR = Path(__file__).resolve().parent / "static"

ConsumerFactory = Callable[[str, list[str]], Consumer]


def create_app(
    settings: GatewaySettings,
    *,
    publisher: Publisher | None = None,
    consumer_factory: ConsumerFactory | None = None,
    blob_store: BlobStore | None = None,
    signal: EventSignal | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the app; nothing is opened until its lifespan starts.

    Injected resources belong to the caller and are not closed here. `on_fatal` hears
    (from any thread) that the process must end: its Kafka producer broke for good, or its
    events consumer died.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await db.create_pool(settings.database_url, SCHEMA)
            stack.push_async_callback(pool.close)
            await db.migrate(pool, SCHEMA, MIGRATIONS)
            # Expired idempotency keys of users who never come back (a returning user's
            # own are deleted as they claim a new key), and the old part of the event log.
            await stack.enter_async_context(
                pruning(
                    AgePruner(pool, "idempotency_keys", "expires_at", keep=timedelta(0)),
                    AgePruner(
                        pool,
                        "events",
                        "created_at",
                        keep=timedelta(seconds=settings.event_log_retention_s),
                    ),
                )
            )
            stack.push_async_callback(app.state.moderator.aclose)

            blobs = blob_store
            if blobs is None:
                blobs = await stack.enter_async_context(S3BlobStore(settings.s3))
            pub = publisher
            if pub is None:
                pub = kafka_publisher(settings.kafka, "gateway", on_fatal)
                stack.push_async_callback(pub.close)

            topics = settings.kafka.topics
            make_consumer = consumer_factory or (
                lambda group, names: kafka_consumer(settings.kafka, group, names)
            )
            wakeups = signal
            if wakeups is None:
                # One LISTEN connection per process, fanned out in memory to its streams.
                wakeups = await stack.enter_async_context(PgEventSignal(settings.database_url))
            webhooks = build_dispatcher(pool, settings)
            webhooks.start()
            stack.push_async_callback(webhooks.aclose, settings.shutdown_timeout_s)
            # The streams' view of the log, fed by this process's projection and by every
            # replica's commit notes.
            feed = EventFeed(pool, wakeups, max_age_s=settings.sse_poll_s)
            stack.push_async_callback(feed.aclose)
            projection = Projection(pool, wakeups, webhooks, feed)
            loop = ConsumerLoop(
                name=CONSUMER_GROUP,
                consumer=make_consumer(CONSUMER_GROUP, [topics.events]),
                handlers={topics.events: projection.handle},
                # Events handed over together are projected in one transaction.
                batch_handlers={topics.events: projection.handle_batch},
                dead_letters=pub,
                dead_letter_topic=topics.dead_letter,
                poll_timeout=settings.consumer_poll_s or settings.kafka.poll_timeout_ms / 1000,
            )
            task = asyncio.create_task(loop.run(), name="gateway-events-consumer")
            if on_fatal is not None:
                task.add_done_callback(_died(on_fatal))
            stack.push_async_callback(_stop_consumer, loop, task, settings.shutdown_timeout_s)

            app.state.gateway = GatewayState(
                settings=settings,
                pool=pool,
                blobs=blobs,
                publisher=pub,
                signal=wakeups,
                feed=feed,
                consumer_loop=loop,
                consumer_task=task,
                projection=projection,
                cdn_signer=cdn.signer_for(settings),
            )
            log.info("event=gateway_started port=%d env=%s", settings.port, settings.env)
            yield
            log.info("event=gateway_stopping")

    # docs_url/redoc_url=None: install_docs serves /docs and /redoc from local assets, not a CDN.
    app = FastAPI(
        title="imagegen gateway",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # An SSE stream's span is TelemetryMiddleware's: it ends once the stream is answered.
        telemetry={"exclude": streams.is_event_stream},
    )
    install_docs(app)
    install(app, settings)  # authenticator, moderator, idempotency middleware
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "Idempotency-Key"],
            expose_headers=["Retry-After", "Idempotent-Replayed"],
        )
    # Outermost: the request's span and log context cover every other middleware.
    app.add_middleware(TelemetryMiddleware, service="gateway", streams=streams.is_event_stream)
    for module in (
        characters,
        loras,
        references,
        stories,
        generation,
        images,
        jobs,
        streams,
        tokens,
        health,
    ):
        app.include_router(module.router)
    # The web page's scripts and styles (the page itself is `/`): plain files, no build step.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _died(on_fatal: Callable[[BaseException], None]) -> Callable[[asyncio.Task[None]], None]:
    def ended(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            on_fatal(error)

    return ended


async def _stop_consumer(loop: ConsumerLoop, task: asyncio.Task[None], grace_s: float) -> None:
    """Stop fetching, let the in-flight event finish and commit, then return."""
    loop.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), grace_s)
    except TimeoutError:
        log.warning("event=consumer_stop_timeout grace_s=%.1f", grace_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception:
        log.exception("event=consumer_failed")
