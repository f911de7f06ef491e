"""`python -m services.gateway`: build settings, configure logging and tracing, serve."""

from __future__ import annotations

import uvicorn

from imagegen.telemetry import configure_telemetry
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()
    configure_telemetry("gateway", settings.log_level, settings.log_format)
    config = uvicorn.Config(
        lambda: create_app(settings),
        factory=True,
        host=settings.host,
        port=settings.port,
        log_config=None,  # keep the key=value logging configured above
        proxy_headers=True,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
    )
    # uvicorn maps SIGTERM/SIGINT to a graceful stop; the lifespan then drains the consumer.
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
