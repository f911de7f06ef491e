"""Wake the event loop when a consumer has something to hand over, instead of a thread
blocked in `poll()`.

confluent-kafka (2.13 and later) cuts every blocking poll into 200 ms pieces and takes
the GIL between them to look for signals, so each consumer's poll thread woke five
times a second at rest, and each record reached the event loop through that thread (the
thread wakes, then the loop). librdkafka can instead write a byte to a file descriptor
when its consumer queue goes from empty to non-empty (`rd_kafka_queue_io_event_enable`);
the loop watches that pipe and serves the queue with non-blocking polls: no thread, no
wake-up at rest, one wake-up per arrival.

confluent-kafka does not expose that call, so it is made through ctypes on the librdkafka
that confluent-kafka itself loaded, with the client handle (`rd_kafka_t *`) read from the
`Consumer` object (the first field after the object header, in every 2.x release). The
handle is checked before use: librdkafka must name it after the consumer's `client.id`.
Where any of that does not hold (another build, a layout that moved), `attach` returns
None and the client polls from a thread as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import confluent_kafka

log = logging.getLogger(__name__)


@functools.cache
def _librdkafka() -> ctypes.CDLL | None:
    """The librdkafka that confluent-kafka loaded (the same mapped file), typed; else None."""
    release = confluent_kafka.version()  # "2.16.1" (older releases: a tuple)
    if not str(release[0] if isinstance(release, tuple) else release).startswith("2."):
        return None  # the handle layout is known for the 2.x releases only
    package = Path(confluent_kafka.__file__).resolve().parent
    candidates = sorted((package.parent / "confluent_kafka.libs").glob("librdkafka*.so*"))
    loaded = _mapped_files()
    path = next((str(p) for p in candidates if str(p.resolve()) in loaded), None)
    if path is None:
        return None  # a system librdkafka, or not Linux: no way to be sure it is the same
    lib = ctypes.CDLL(path)  # already mapped: the same instance, not a second copy
    lib.rd_kafka_version.restype = ctypes.c_int
    if lib.rd_kafka_version() != confluent_kafka.libversion()[1]:
        return None
    lib.rd_kafka_name.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_name.restype = ctypes.c_char_p
    for get_queue in (lib.rd_kafka_queue_get_consumer, lib.rd_kafka_queue_get_main):
        get_queue.argtypes = [ctypes.c_void_p]
        get_queue.restype = ctypes.c_void_p
    lib.rd_kafka_queue_io_event_enable.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_queue_io_event_enable.restype = None
    lib.rd_kafka_queue_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_queue_destroy.restype = None
    return lib


def _mapped_files() -> set[str]:
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    return {line.split(maxsplit=5)[5] for line in lines if line.count(" ") >= 5 and "/" in line}


Client = confluent_kafka.Consumer | confluent_kafka.Producer


def _handle(client: Client) -> int | None:
    """The client's `rd_kafka_t *`, read where confluent-kafka's `Handle` struct keeps it."""
    if type(client) not in (confluent_kafka.Consumer, confluent_kafka.Producer):
        return None
    address = ctypes.c_void_p.from_address(id(client) + object.__basicsize__).value
    return address or None


class QueueWakeup:
    """A pipe that librdkafka writes to when a client's queue stops being empty.

    A consumer: `clear()`, then poll without blocking until the poll returns nothing, then
    `await wait(timeout)`. An arrival after the clear either comes out of that poll or
    leaves a byte in the pipe, so the wait never sleeps through it. librdkafka writes at
    most once between two polls of the queue (each poll re-arms it). A producer: `watch()`
    calls back on the loop, which clears and polls, whenever the pipe is readable.
    """

    def __init__(self, lib: ctypes.CDLL, queue: int) -> None:
        self._lib = lib
        self._queue: int | None = queue
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        lib.rd_kafka_queue_io_event_enable(queue, self._write, b"!", 1)
        # librdkafka writes only when the queue goes from empty to not: what it queued
        # before this (a log line of the client's first connection attempt) would leave it
        # non-empty with nothing written, and nothing would ever be written after. The
        # first wait (or watch) polls at once.
        self.nudge()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def closed(self) -> bool:
        return self._queue is None

    def nudge(self) -> None:
        """Have the next wait (or watch) poll, as if librdkafka had written."""
        if self._queue is not None:
            with contextlib.suppress(BlockingIOError):
                os.write(self._write, b"!")

    def clear(self) -> None:
        """Empty the pipe (before a poll that will see whatever the bytes announced)."""
        if self._queue is None:
            return  # its descriptors are closed, and their numbers may be another's now
        emptied = False
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 256):
                emptied = True
        if emptied and self._waiters:
            # Bytes meant for a wait in flight (a second poller of the same consumer): it
            # looks again too, or it would sleep through what they announced.
            self._wake_all()

    async def wait(self, timeout: float) -> None:
        """Until librdkafka writes to the pipe, `timeout` passes, or this is closed."""
        if self._queue is None or timeout <= 0:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._unwatch()
            self._loop = loop
            _evict(loop, self._read)
        if not self._waiters:
            loop.add_reader(self._read, self._wake_all)
        done: asyncio.Future[None] = loop.create_future()
        self._waiters.add(done)
        timer = loop.call_later(timeout, _settle, done)
        try:
            await done
        finally:
            timer.cancel()
            self._waiters.discard(done)
            if not self._waiters:
                self._unwatch()

    def watch(self, loop: asyncio.AbstractEventLoop, serve: Callable[[], None]) -> None:
        """Call `serve` on `loop` (whose thread this must run on) each time the pipe is
        readable, until close(); `serve` must clear() the pipe."""
        if self._queue is None:
            return
        self._unwatch()
        self._loop = loop
        _evict(loop, self._read)
        loop.add_reader(self._read, serve)

    def _wake_all(self) -> None:
        # The bytes stay for the next clear(); the reader goes, so they cannot spin the loop.
        waiters, self._waiters = self._waiters, set()
        self._unwatch()
        for done in waiters:
            _settle(done)

    def _unwatch(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._read)

    def close(self) -> None:
        """Stop the writes and give librdkafka its queue back, before the consumer's close()
        (which must not find the queue still referenced). Called on the loop that waits
        here: a wait in flight returns at once."""
        queue, self._queue = self._queue, None
        if queue is None:
            return
        waiters, self._waiters = self._waiters, set()
        self._unwatch()
        for done in waiters:
            _settle(done)
        self._lib.rd_kafka_queue_io_event_enable(queue, -1, None, 0)
        self._lib.rd_kafka_queue_destroy(queue)
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _evict(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Forget a registration the loop may still hold for this descriptor's number, left by a
    descriptor closed without being unregistered: asyncio would take ours for a change of
    that one's callback and never add the new descriptor to epoll (no wake-up, ever)."""
    loop.remove_reader(fd)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def attach(client: Client, config: dict[str, Any]) -> QueueWakeup | None:
    """A wake-up pipe on the queue a consumer's poll() (or a producer's) serves, or None
    where it cannot be made safely."""
    try:
        lib = _librdkafka()
    except OSError as exc:
        log.info("event=poll_wakeup_unavailable reason=%r", str(exc))
        return None
    handle = _handle(client) if lib is not None else None
    if lib is None or handle is None:
        log.info("event=poll_wakeup_unavailable reason=unknown_build")
        return None
    consumer = isinstance(client, confluent_kafka.Consumer)
    # librdkafka names a client `<client.id>#<consumer|producer>-<n>`: anything else is not
    # a handle.
    role = "consumer" if consumer else "producer"
    name = (lib.rd_kafka_name(handle) or b"").decode(errors="replace")
    if not name.startswith(f"{config.get('client.id', 'rdkafka')}#{role}-"):
        log.info("event=poll_wakeup_unavailable reason=handle_mismatch")
        return None
    get_queue = lib.rd_kafka_queue_get_consumer if consumer else lib.rd_kafka_queue_get_main
    queue = get_queue(handle)
    if not queue:
        return None
    return QueueWakeup(lib, queue)
