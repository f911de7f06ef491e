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

The fetch wait itself is the service's `IMAGEGEN_KAFKA_FETCH_WAIT_MAX_MS`, as every other
consumer's (faust fixes 1.5 s): at rest each wait is one fetch request to the broker and
one wake of the consumer thread, so the local stack's 5 s makes ~0.2 fetches a second
instead of ~0.7. What it delays is only the KPIs at a trickle (fewer than
`fetch_min_bytes` of events waiting): they lag by up to the wait plus `analytics_batch_s`;
no image and no other consumer waits for this one.

faust has no setting for any of them: the app builds a transport whose consumer thread
sets them on the aiokafka consumer it creates, before that consumer starts (aiokafka keeps
its constructor's `fetch_min_bytes`, `fetch_max_wait_ms` and `consumer_timeout_ms` as
`_fetch_min_bytes`, `_fetch_max_wait_ms` and `_consumer_timeout` and hands them to its
fetcher at start).
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
            consumer._fetch_max_wait_ms = app.fetch_max_wait_ms
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
    """A faust app whose worker consumer fetches at least `fetch_min_bytes` at a time, the
    broker holding each fetch up to `fetch_max_wait_ms`."""

    fetch_min_bytes = 1
    fetch_max_wait_ms = 1500

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)
