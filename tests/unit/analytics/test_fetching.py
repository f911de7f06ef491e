"""The analytics consumer asks the broker for fuller fetches (services/analytics/fetching.py)."""

from __future__ import annotations

import asyncio

from services.analytics.app import create_app
from services.analytics.fetching import FETCHER_WAKE_S
from services.analytics.settings import AnalyticsSettings


def test_the_worker_consumer_is_built_with_fuller_fetches_and_fewer_wakes() -> None:
    settings = AnalyticsSettings(analytics_fetch_min_bytes=12345)
    settings.kafka.bootstrap = "127.0.0.1:9"  # never connected: the consumer is only built

    async def build() -> tuple[int, float]:
        app, _ = create_app(settings)
        app.finalize()
        thread = app.consumer._thread  # type: ignore[attr-defined]  # faust's aiokafka thread
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return int(consumer._fetch_min_bytes), float(consumer._consumer_timeout)
        finally:
            await consumer.stop()

    assert asyncio.run(build()) == (12345, FETCHER_WAKE_S)
