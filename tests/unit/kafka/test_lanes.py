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


ORDERED = "ordered"


async def test_an_ordered_topic_is_handled_in_partition_order_while_other_lanes_go_on() -> None:
    broker = InMemoryBroker(partitions=1)
    publisher = broker.publisher()
    for i in range(3):
        await publisher.publish(ORDERED, "user", f"r{i}".encode())
    for i in range(3):
        await publisher.publish(IN, "image", f"i{i}".encode())
    first_running = asyncio.Event()
    release_first = asyncio.Event()
    images_done: list[bytes] = []
    order: list[bytes] = []
    running_ordered = 0
    peak_ordered = 0

    async def on_ordered(record: Record) -> None:
        nonlocal running_ordered, peak_ordered
        running_ordered += 1
        peak_ordered = max(peak_ordered, running_ordered)
        if record.value == b"r0":
            first_running.set()
            await asyncio.wait_for(release_first.wait(), 5)
        order.append(record.value)
        running_ordered -= 1

    async def on_image(record: Record) -> None:
        images_done.append(record.value)

    loop = laned_loop(
        "w",
        broker.consumer("w", [ORDERED, IN]),
        {ORDERED: on_ordered, IN: on_image},
        4,
        dead_letters=publisher,
        dead_letter_topic=DLQ,
        poll_timeout=0.01,
        ordered=frozenset({ORDERED}),
    )
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(10):
        await first_running.wait()
        # r1 and r2 wait for r0; the images pass them on the free lanes.
        while len(images_done) < 3:
            await asyncio.sleep(0.01)
        assert order == []
        release_first.set()
        while len(order) < 3:
            await asyncio.sleep(0.01)
    loop.stop()
    await task
    assert order == [b"r0", b"r1", b"r2"]
    assert peak_ordered == 1
    assert broker.committed[("w", ORDERED, 0)] == 3
    assert broker.committed[("w", IN, 0)] == 3


async def test_stopping_releases_a_lane_waiting_for_its_turn_without_committing_its_record() -> (
    None
):
    broker = InMemoryBroker(partitions=1)
    publisher = broker.publisher()
    for i in range(2):
        await publisher.publish(ORDERED, "user", f"r{i}".encode())
    started = asyncio.Event()
    handled: list[bytes] = []

    async def on_ordered(record: Record) -> None:
        started.set()
        await asyncio.sleep(0.2)
        handled.append(record.value)

    loop = laned_loop(
        "w",
        broker.consumer("w", [ORDERED]),
        {ORDERED: on_ordered},
        2,
        dead_letters=publisher,
        dead_letter_topic=DLQ,
        poll_timeout=0.01,
        ordered=frozenset({ORDERED}),
    )
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(10):
        await started.wait()
        await asyncio.sleep(0.05)  # r1 polled by the other lane, waiting for r0
        loop.stop()
        await task
    assert handled == [b"r0"]
    assert broker.committed[("w", ORDERED, 0)] == 1  # r1 is redelivered, not committed


class _Silent:
    """A consumer that gets nothing (a fenced one): each poll waits out its timeout."""

    def __init__(self) -> None:
        self.polls = 0
        self.closed = False

    async def poll(self, timeout: float) -> Record | None:
        self.polls += 1
        await asyncio.sleep(timeout)
        return None

    async def commit(self, record: Record) -> None:
        raise AssertionError("nothing was polled, so nothing is committed")

    async def close(self) -> None:
        self.closed = True


async def test_once_the_lanes_stop_no_lane_queued_behind_the_poll_in_flight_polls_again() -> None:
    silent = _Silent()
    broker = InMemoryBroker(partitions=1)

    async def handle(record: Record) -> None:
        raise AssertionError("nothing to handle")

    loop = laned_loop(
        "w",
        silent,
        {IN: handle},
        8,
        dead_letters=broker.publisher(),
        dead_letter_topic=DLQ,
        poll_timeout=0.2,
    )
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(10):
        while silent.polls == 0:
            await asyncio.sleep(0.01)
        # One lane polls; the other seven wait for the poll lock.
        loop.stop()
        await task
    assert silent.polls == 1  # the one in flight; each lane behind it used to poll in turn
    assert silent.closed


async def test_a_stop_ends_the_shared_poll_in_flight_instead_of_waiting_it_out() -> None:
    broker = InMemoryBroker(partitions=1)

    async def handle(record: Record) -> None:
        raise AssertionError("nothing to handle")

    loop = laned_loop(
        "w",
        broker.consumer("w", [IN]),
        {IN: handle},
        4,
        dead_letters=broker.publisher(),
        dead_letter_topic=DLQ,
        poll_timeout=60.0,
    )
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)  # one lane polls, the others wait behind it
    loop.stop()
    await asyncio.wait_for(task, 10)  # not the minute
