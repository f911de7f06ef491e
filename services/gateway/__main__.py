"""`python -m services.gateway`: build settings, configure logging and tracing, serve."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from imagegen import preflight
from imagegen.telemetry import configure_telemetry
from services.gateway import heap
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

TICK_S = 1.0
"""How often the server's main loop looks at its state when nothing wakes it (uvicorn's own
loop looks every 0.1 s: ten wake-ups a second at rest)."""


class QuietServer(uvicorn.Server):
    """uvicorn's server, whose main loop sleeps until a stop is asked (`wake`) or a second
    has passed, instead of waking every 0.1 s. Each turn is one of uvicorn's ticks of a
    second (`on_tick` with a counter that is a multiple of ten), so the Date header still
    changes every second; a stop (a signal, or `stop` from any thread) is seen at once."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()
            counter = (counter + 10) % 864000
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.wake()

    def stop(self) -> None:
        """Stop as on SIGTERM; from any thread."""
        self.should_exit = True
        self.wake()

    def wake(self) -> None:
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)


def main() -> None:
    if preflight.wants_check():
        sys.exit(preflight.check("gateway", GatewaySettings))
    settings = GatewaySettings()
    configure_telemetry("gateway", settings.log_level, settings.log_format)
    failures: list[BaseException] = []

    def fatal(error: BaseException) -> None:
        # From any thread: the server stops as on SIGTERM.
        failures.append(error)
        server.stop()

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
    server = QuietServer(config)
    server.run()
    if failures:
        # A broken Kafka client or a dead events consumer: a fresh process is the cure.
        log.error("event=gateway_exit error=%r", str(failures[0]))
        sys.exit(1)


if __name__ == "__main__":
    main()
