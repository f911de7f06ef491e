"""`python -m services.analytics`: windowed KPIs of the events topic, served over HTTP."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from aiohttp import web

from imagegen import preflight
from imagegen.telemetry import configure_telemetry
from services.analytics.app import create_app, events_partitions
from services.analytics.changelogs import changelog_specs, ensure_changelogs
from services.analytics.http import build_web_app
from services.analytics.settings import AnalyticsSettings

log = logging.getLogger(__name__)


async def serve(settings: AnalyticsSettings) -> None:
    started = time.monotonic()
    specs = changelog_specs(settings, events_partitions(settings))
    await asyncio.to_thread(ensure_changelogs, settings, specs)
    app, store = create_app(settings)
    recovered_at: list[float] = []

    def ready() -> tuple[bool, str]:
        recovery = app.tables.recovery  # type: ignore[attr-defined]  # TableManager's
        if app.rebalancing or app.in_recovery or not recovery.completed.is_set():
            return False, "recovering tables from their changelogs"
        if not app.consumer.assignment():
            return False, "no partitions assigned yet"
        if not recovered_at:
            recovered_at.append(time.monotonic())
            log.info("event=analytics_ready recovery_s=%.3f", recovered_at[0] - started)
        return True, ""

    runner = web.AppRunner(
        build_web_app(store, ready, settings.analytics_budget_usd_daily, store.status),
        access_log=None,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.analytics_host, settings.analytics_port)
    await site.start()
    log.info(
        "event=analytics_http host=%s port=%d", settings.analytics_host, settings.analytics_port
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.finalize()
    await app.start()
    watcher = asyncio.create_task(_log_ready(ready, stop))
    try:
        crashed = asyncio.create_task(app.wait_for_stopped())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({crashed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if crashed.done() and app.crash_reason is not None:
            raise SystemExit(f"analytics stopped: {app.crash_reason!r}")
    finally:
        watcher.cancel()
        await app.stop()
        await runner.cleanup()


async def _log_ready(ready: object, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if ready()[0]:  # type: ignore[operator]
            return
        await asyncio.sleep(0.2)


def main() -> None:
    if preflight.wants_check():
        sys.exit(preflight.check("analytics", AnalyticsSettings))
    settings = AnalyticsSettings()
    configure_telemetry("analytics", settings.log_level, settings.log_format)
    # faust warns on every full producer buffer and long commit: normal under a backlog.
    for chatty in ("faust.transport.producer", "mode.timers"):
        logging.getLogger(chatty).setLevel(logging.ERROR)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
