"""`python -m services.gateway`: build settings, configure logging and tracing, serve."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn
from fastapi import FastAPI

from imagegen import preflight
from imagegen.telemetry import configure_telemetry
from services.gateway import heap
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


def main() -> None:
    if preflight.wants_check():
        sys.exit(preflight.check("gateway", GatewaySettings))
    settings = GatewaySettings()
    configure_telemetry("gateway", settings.log_level, settings.log_format)
    failures: list[BaseException] = []

    def fatal(error: BaseException) -> None:
        # From any thread: uvicorn checks the flag every 0.1 s and stops as on SIGTERM.
        failures.append(error)
        server.should_exit = True

    def build() -> FastAPI:
        app = create_app(settings, on_fatal=fatal)
        # Long-lived objects out of the garbage collector's full collections (see heap.py).
        heap.freeze_long_lived(asyncio.get_running_loop())
        return app

    config = uvicorn.Config(
        build,
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the key=value logging configured above
        proxy_headers=True,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    # uvicorn maps SIGTERM/SIGINT to a graceful stop; the lifespan then drains the consumer.
    server = uvicorn.Server(config)
    server.run()
    if failures:
        # A broken Kafka client or a dead events consumer: a fresh process is the cure.
        log.error("event=gateway_exit error=%r", str(failures[0]))
        sys.exit(1)


if __name__ == "__main__":
    main()
