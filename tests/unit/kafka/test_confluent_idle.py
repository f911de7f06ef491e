"""The producer at rest. Its poller thread (IMAGEGEN_KAFKA_POLL_WAKEUP=false) waits for a send
instead of polling, each send wakes it (its delivery report is served), and close ends it
without waiting out the idle poll; with librdkafka's wake-up pipe (the default) there is no
thread, and each report wakes the loop through the pipe."""

from __future__ import annotations

import asyncio

import pytest

from imagegen.kafka import confluent
from imagegen.kafka.confluent import KafkaPublisher
from tests.unit.kafka.mock_cluster import MockCluster


@pytest.mark.parametrize("wakeup", [False, True], ids=["thread-poll", "loop-wakeup"])
async def test_an_idle_publisher_delivers_each_publish_and_closes_at_once(
    cluster: MockCluster, monkeypatch: pytest.MonkeyPatch, wakeup: bool
) -> None:
    # No idle poll within the test: only the wakes can serve a report or end the thread.
    monkeypatch.setattr(confluent, "IDLE_POLL_S", 3600.0)
    publisher = KafkaPublisher(cluster.bootstrap, "idle-test", wakeup=wakeup)
    assert (publisher._poller is None) is wakeup
    closed = False
    try:
        for i in range(3):
            # Each publish finds the poller waiting at rest (nothing in flight after the
            # one before): only the send's wake gets its delivery report served.
            await asyncio.wait_for(publisher.publish("t", "k", f"m{i}".encode()), 10)
            # The report's callback resolves the publish from inside the poller's poll();
            # librdkafka counts the message until that poll has finished with it.
            await _drained(publisher)
        await publisher.close()
        closed = True
        if publisher._poller is not None:
            # close() joins the poller for at most 2 s: only its wake lets the thread end.
            assert not publisher._poller.is_alive()
        else:
            assert publisher._wakeup is not None
            assert publisher._wakeup.closed
    finally:
        if not closed:
            await publisher.close()


async def _drained(publisher: KafkaPublisher, within_s: float = 10.0) -> None:
    """Nothing left in flight or unserved (a deadline, not a timing)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while len(publisher._producer) > 0:
        assert asyncio.get_running_loop().time() < deadline, "a message left in flight"
        await asyncio.sleep(0.01)
