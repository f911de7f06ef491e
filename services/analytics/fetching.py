"""Fuller fetches: the analytics consumer lets the broker gather records before answering.

faust builds its aiokafka consumer without `fetch_min_bytes` (so Kafka's default, one
byte) and with `fetch_max_wait_ms` 1500: the broker answers a fetch as soon as one record
is there, and at a steady trickle every event costs the service a fetch round trip, a
hand-off from faust's consumer thread and a pass through its stream machinery (measured
with bench/analytics_cost.py: ~2 ms CPU per event when events come one by one, ~0.4 ms
when they come together). The KPIs need no sub-second freshness, so this consumer asks
the broker to answer once `fetch_min_bytes` are there, or after those 1.5 s.

At rest the same consumer's fetch routine woke every 200 ms (aiokafka's
`consumer_timeout_ms`) while its long-polling fetch was out: once a second is enough.

faust has no setting for either: the app builds a transport whose consumer thread sets
them on the aiokafka consumer it creates, before that consumer starts (aiokafka keeps
its constructor's `fetch_min_bytes` and `consumer_timeout_ms` as `_fetch_min_bytes` and
`_consumer_timeout` and hands them to its fetcher at start).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver
from faust.types import TransportT

FETCHER_WAKE_S = 1.0


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: driver.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        app = self.app
        if isinstance(app, FetchingApp):
            consumer._fetch_min_bytes = app.fetch_min_bytes
            # aiokafka's `consumer_timeout_ms` (200): how often its fetch routine wakes
            # while a fetch is out, idle too; a new partition is fetched this much later.
            consumer._consumer_timeout = FETCHER_WAKE_S
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class FetchingApp(faust.App):
    """A faust app whose worker consumer fetches at least `fetch_min_bytes` at a time."""

    fetch_min_bytes = 1

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)
