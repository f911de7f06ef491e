"""Consumer lanes on the in-memory broker: several records at once, commits in order, and a
lane that dies takes the group down cleanly."""

from __future__ import annotations

import asyncio

from imagegen.errors import FatalClientError, PermanentError
from imagegen.kafka import Handler, Record
from imagegen.kafka.lanes import LaneGroup, laned_loop
from imagegen.kafka.memory import InMemoryBroker
from schemas.deadletter import DeadLetterHeaders

IN, DLQ = "in", "dlq"


async def _feed(broker: InMemoryBroker, count: int) -> None:
    publisher = broker.publisher()
    for i in range(count):
        await publisher.publish(IN, "same-key", str(i).encode())


def _lanes(broker: InMemoryBroker, handle: Handler, lanes: int) -> LaneGroup:
    return laned_loop(
        "w",
        broker.consumer("w", [IN]),
        {IN: handle},
        lanes,
        dead_letters=broker.publisher(),
        dead_letter_topic=DLQ,
        poll_timeout=0.01,
    )


async def test_lanes_handle_records_of_one_partition_at_the_same_time() -> None:
    broker = InMemoryBroker(partitions=1)
    await _feed(broker, 4)
    running, peak, done = 0, 0, []
    release = asyncio.Event()

    async def handle(record: Record) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if peak == 4:
            release.set()
        await asyncio.wait_for(release.wait(), 5)
        running -= 1
        done.append(record.offset)

    loop = _lanes(broker, handle, 4)
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(10):
        while len(done) < 4:
            await asyncio.sleep(0.01)
    loop.stop()
    await task
    assert peak == 4
    assert broker.committed[("w", IN, 0)] == 4


async def test_a_lane_that_dies_stops_the_others_after_their_record_then_raises() -> None:
    broker = InMemoryBroker(partitions=1)
    await _feed(broker, 2)
    slow_started, finished = asyncio.Event(), []

    async def handle(record: Record) -> None:
        if record.value == b"0":
            slow_started.set()
            await asyncio.sleep(0.3)
            finished.append(record.offset)
            return
        await slow_started.wait()
        raise FatalClientError("kafka: PRODUCER_FENCED: fenced")

    loop = _lanes(broker, handle, 2)
    try:
        await asyncio.wait_for(loop.run(), 10)
    except FatalClientError:
        pass
    else:
        raise AssertionError("the lane's fatal error was not raised")
    assert finished == [0]  # the other lane drained its record before the group ended
    assert all(lane.stopping for lane in loop.lanes)
    assert broker.committed[("w", IN, 0)] == 1  # the failed record is left for a restart
    assert broker.records(DLQ) == []


async def test_dead_letters_of_every_lane_name_the_consumer_group() -> None:
    broker = InMemoryBroker(partitions=1)
    await _feed(broker, 4)
    both_busy = asyncio.Event()
    busy = 0

    async def handle(record: Record) -> None:
        nonlocal busy
        busy += 1
        if busy >= 2:
            both_busy.set()
        await asyncio.wait_for(both_busy.wait(), 5)  # so that both lanes take records
        raise PermanentError(f"poison {record.offset}")

    loop = _lanes(broker, handle, 2)
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(10):
        while len(broker.records(DLQ)) < 4:
            await asyncio.sleep(0.01)
    loop.stop()
    await task
    assert {lane.handled + lane.dead_lettered for lane in loop.lanes} != {0}
    assert min(lane.dead_lettered for lane in loop.lanes) >= 1
    failed_by = {DeadLetterHeaders.from_headers(r.headers).failed_by for r in broker.records(DLQ)}
    assert failed_by == {"w"}
