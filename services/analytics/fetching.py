"""Fuller fetches: the analytics consumer lets the broker gather records before answering.

faust builds its aiokafka consumer without `fetch_min_bytes` (so Kafka's default, one
byte) and with `fetch_max_wait_ms` 1500: the broker answers a fetch as soon as one record
is there, and at a steady trickle every event costs the service a fetch round trip, a
hand-off from faust's consumer thread and a pass through its stream machinery (measured
with bench/analytics_cost.py: ~2 ms CPU per event when events come one by one, ~0.4 ms
when they come together). The KPIs need no sub-second freshness, so this consumer asks
the broker to answer once `fetch_min_bytes` are there, or after those 1.5 s.

At rest the same consumer's fetch routine woke every 200 ms (aiokafka's
`consumer_timeout_ms`) while its long-polling fetch was out. Whatever it must act on wakes
it anyway (a fetch returning, a new assignment, a resumed partition, a seek, records taken,
a backoff ending), so it looks on its own only every 5 s.

Two more wake-ups a second at rest came from the consumer thread itself, which faust's
`mode` library gives a keepalive task (every 1 s, "so that the method queue is served")
and a watchdog (every 1.1 s, each also waking the main loop). Calls reach the thread with
`call_soon_threadsafe`, which wakes its loop by itself, so the keepalive does nothing the
loop does not already do: it runs no timer here, and the watchdog looks every 10 s.
faust's fetch loop asks the thread for records with a 1 s timeout, so at rest each second
was a hand-off to the thread, a timer there and a hand-off back: outside a rebalance and
the table recovery after it, a fetch waits up to `STREAM_FETCH_WAIT_S` (records end it at
once, whenever they come). During them it keeps faust's 1 s: each fetch asks for the
partitions active when it was asked for, so the events partitions that the recovery resumes
are fetched within a second of it ending. The price: when a later rebalance starts (another
replica joins or leaves), a fetch already waiting for the old partitions holds the new ones
back by up to that wait.

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

The same transport closes a hole through which a restart lost events (found by
tests/e2e/test_analytics.py, which failed about one CI run in three):
- faust hands its consumer thread its *live* set of active partitions for each fetch.
  When the table recovery ends it pauses the changelog partitions while the event
  partitions are still paused from the assignment, so the set is empty for a moment, and
  aiokafka reads an empty set as "every partition": a fetch already waiting returned the
  events topic's records, faust dropped them as not active, and aiokafka's position had
  moved past them. Each fetch now gets a copy of the set taken when it was asked for.
- faust then seeks every stream partition back to its committed offset, but aiokafka
  seeks only where that offset is above 0: a partition the killed process had read but
  not committed yet kept the position of the dropped records, and their counts were lost.
  A stream partition with no committed offset now goes back to where the reset policy
  starts (the log's beginning here), and one committed at 0 to 0.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, TransportT
from mode import Service

FETCHER_WAKE_S = 5.0
STREAM_FETCH_WAIT_S = 5.0
"""How long one fetch for the events partitions may wait for records (faust asks for 1 s)."""
WATCHDOG_S = 10.0
"""How often the consumer thread's watchdog looks (mode's: 1.1 s), and it warns after 3x."""


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: driver.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        app = self.app
        if isinstance(app, FetchingApp):
            consumer._fetch_min_bytes = app.fetch_min_bytes
            consumer._fetch_max_wait_ms = app.fetch_max_wait_ms
            # aiokafka's `consumer_timeout_ms` (200): how often its fetch routine wakes
            # while a fetch is out, idle too (see the module's docstring).
            consumer._consumer_timeout = FETCHER_WAKE_S
        return consumer

    @Service.task
    async def _thread_keepalive(self) -> None:
        """mode's keepalive woke the thread every second; its queue wakes it by itself."""

    async def _keepalive2(self) -> None:
        """mode's watchdog for a thread loop that stops turning, every `WATCHDOG_S`: it
        warns when the loop was held 3 times that long, and leaves the main loop alone."""
        last = time.monotonic()
        while not self.should_stop:
            await self.sleep(WATCHDOG_S)
            now = time.monotonic()
            if now - last > 3 * WATCHDOG_S:
                self.log.warning("The consumer thread's loop was held %.1f s", now - last)
            last = now

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await self.call_thread(self._seek_stream_partitions)
        return committed

    async def _seek_stream_partitions(self) -> dict[TP, int | None]:
        """Every assigned stream partition to its committed offset, or where the reset
        policy starts when it has none; changelog partitions as aiokafka would (faust
        commits none, and their recovery seeks them itself)."""
        consumer = self._ensure_consumer()
        committed: dict[TP, int | None] = {}
        uncommitted = []
        for tp in consumer.assignment():
            offset = await consumer.committed(tp)
            committed[tp] = offset
            if self.consumer._is_changelog_tp(tp):
                if offset:
                    consumer.seek(tp, offset)
            elif offset is not None and offset >= 0:
                consumer.seek(tp, offset)
            else:
                uncommitted.append(tp)
        if uncommitted:
            if self.app.conf.consumer_auto_offset_reset == "latest":
                await consumer.seek_to_end(*uncommitted)
            else:
                await consumer.seek_to_beginning(*uncommitted)
        return committed  # None: none yet, as faust reads it


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        # A copy: faust changes the set while the fetch waits, and an empty set means
        # every partition to aiokafka (see the module's docstring).
        snapshot = None if active_partitions is None else set(active_partitions)
        app = self.app
        if not (app.rebalancing or app.in_recovery):
            timeout = max(timeout, STREAM_FETCH_WAIT_S)
        return await super()._getmany(snapshot, timeout)


class _Transport(driver.Transport):
    Consumer = _Consumer


class FetchingApp(faust.App):
    """A faust app whose worker consumer fetches at least `fetch_min_bytes` at a time, the
    broker holding each fetch up to `fetch_max_wait_ms`."""

    fetch_min_bytes = 1
    fetch_max_wait_ms = 1500

    def _new_transport(self) -> TransportT:
        return _Transport(self.conf.broker_consumer, self)
