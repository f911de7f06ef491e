"""The analytics consumer asks the broker for fuller fetches (services/analytics/fetching.py)."""

from __future__ import annotations

import asyncio

from faust.types import TP

from services.analytics.app import create_app
from services.analytics.fetching import FETCHER_WAKE_S, STREAM_FETCH_WAIT_S
from services.analytics.monitor import QuietMonitor
from services.analytics.settings import AnalyticsSettings


def test_the_worker_consumer_is_built_with_fuller_fetches_and_fewer_wakes() -> None:
    settings = AnalyticsSettings(analytics_fetch_min_bytes=12345)
    settings.kafka.bootstrap = "127.0.0.1:9"  # never connected: the consumer is only built
    settings.kafka.fetch_wait_max_ms = 4321

    async def build() -> tuple[int, int, float]:
        app, _ = create_app(settings)
        app.finalize()
        thread = app.consumer._thread  # type: ignore[attr-defined]  # faust's aiokafka thread
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return (
                int(consumer._fetch_min_bytes),
                int(consumer._fetch_max_wait_ms),
                float(consumer._consumer_timeout),
            )
        finally:
            await consumer.stop()

    assert asyncio.run(build()) == (12345, 4321, FETCHER_WAKE_S)


def test_the_app_monitor_runs_no_timer_at_rest() -> None:
    """faust's own Monitor keeps a task that wakes every second; the app's runs none."""
    settings = AnalyticsSettings()
    settings.kafka.bootstrap = "127.0.0.1:9"

    async def tasks_left_running() -> list[str]:
        app, _ = create_app(settings)
        monitor = app.monitor
        assert isinstance(monitor, QuietMonitor)
        await monitor.start()
        await asyncio.sleep(0.05)
        try:
            current = asyncio.current_task()
            return [str(t) for t in asyncio.all_tasks() if t is not current and not t.done()]
        finally:
            await monitor.stop()

    assert asyncio.run(tasks_left_running()) == []


def test_each_fetch_gets_the_active_partitions_as_they_were_when_it_was_asked_for() -> None:
    """faust changes its live set of active partitions while a fetch waits (the table
    recovery pausing its changelogs empties it for a moment), and aiokafka reads an empty
    set as every partition: the fetch must keep the set it was asked with."""
    settings = AnalyticsSettings()
    settings.kafka.bootstrap = "127.0.0.1:9"
    live = {TP("imagegen.events.v1", 0), TP("imagegen.events.v1", 1)}
    seen: list[set[TP]] = []

    async def fetch() -> None:
        app, _ = create_app(settings)
        app.finalize()
        consumer = app.consumer

        async def thread_getmany(active: set[TP], timeout: float) -> dict[TP, list[object]]:
            await asyncio.sleep(0.01)  # the fetch waits; meanwhile faust pauses everything
            seen.append(set(active))
            return {}

        consumer._thread.getmany = thread_getmany  # type: ignore[attr-defined]
        pending = asyncio.create_task(consumer._getmany(live, 1.0))  # type: ignore[attr-defined]
        await asyncio.sleep(0)
        live.clear()
        await pending

    asyncio.run(fetch())
    assert seen == [{TP("imagegen.events.v1", 0), TP("imagegen.events.v1", 1)}]


def _fetch_timeout(*, rebalancing: bool, in_recovery: bool) -> float:
    settings = AnalyticsSettings()
    settings.kafka.bootstrap = "127.0.0.1:9"
    asked: list[float] = []

    async def fetch() -> None:
        app, _ = create_app(settings)
        app.finalize()
        app.rebalancing = rebalancing
        app.in_recovery = in_recovery

        async def thread_getmany(active: set[TP], timeout: float) -> dict[TP, list[object]]:
            asked.append(timeout)
            return {}

        app.consumer._thread.getmany = thread_getmany  # type: ignore[attr-defined]
        await app.consumer._getmany({TP("imagegen.events.v1", 0)}, 1.0)  # type: ignore[attr-defined]

    asyncio.run(fetch())
    return asked[0]


def test_a_fetch_waits_longer_for_records_outside_a_rebalance_and_its_recovery() -> None:
    """faust asks for records with a 1 s timeout, a hand-off to the consumer thread and back
    every second at rest; outside a rebalance a fetch may wait STREAM_FETCH_WAIT_S (records
    end it at once), during one faust's 1 s stands so resumed partitions are fetched soon."""
    assert _fetch_timeout(rebalancing=False, in_recovery=False) == STREAM_FETCH_WAIT_S
    assert _fetch_timeout(rebalancing=True, in_recovery=False) == 1.0
    assert _fetch_timeout(rebalancing=False, in_recovery=True) == 1.0


def test_the_consumer_thread_keeps_no_keepalive_timer() -> None:
    """mode gives the consumer thread a task that wakes it every second; here it returns."""
    settings = AnalyticsSettings()
    settings.kafka.bootstrap = "127.0.0.1:9"

    async def run_keepalive() -> None:
        app, _ = create_app(settings)
        app.finalize()
        thread = app.consumer._thread  # type: ignore[attr-defined]
        tasks = {task.fun.__name__: task for task in thread._get_tasks()}
        await asyncio.wait_for(tasks["_thread_keepalive"](thread), timeout=1.0)

    asyncio.run(run_keepalive())
