"""confluent-kafka adapters: an idempotent, acks=all publisher and a manual-commit consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import Consumer as _Consumer
from confluent_kafka import Producer as _Producer
from pydantic import BaseModel

from imagegen.errors import FatalClientError, PermanentError, RetryableError
from imagegen.kafka.access import ACCESS
from imagegen.kafka.codec import encode
from imagegen.kafka.handover import Handover
from imagegen.kafka.ports import Record
from imagegen.kafka.wakeup import attach
from imagegen.settings import heartbeat_default
from imagegen.telemetry import inject_trace_headers

log = logging.getLogger(__name__)


_DIGITS = re.compile(r"\d+")


class ClientLog:
    """librdkafka's own log lines, through our logging (one format: JSON in production,
    with the service's name) instead of raw text on stderr. A broker it cannot reach
    (FAIL: connection refused or closed) is logged as a warning, since the client
    reconnects by itself; the rest keep librdkafka's level.

    A broker that stays down is said once per `quiet_s` per client and failure: a
    consumer tries its bootstrap connection again every `reconnect.backoff.ms / 2` for as
    long as the broker is away (the backoff does not grow there), and each try was a line
    (a 17 s broker restart: 1,382 warnings in the generator's log). The next line said
    counts the ones left out."""

    def __init__(
        self,
        name: str = "imagegen.kafka.client",
        *,
        quiet_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logging.getLogger(name)
        self._quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        # (client, failure) -> when it was last said, and how many went unsaid since.
        self._said: dict[tuple[str, str], tuple[float, int]] = {}

    def log(self, level: int, msg: str, *args: object) -> None:
        if args and args[0] == "FAIL":
            level = min(level, logging.WARNING)
            left_out = self._left_out(args)
            if left_out is None:
                return
            if left_out:
                msg += " (%d more like it in the last %.0f s)"
                args = (*args, left_out, self._quiet_s)
        self._log.log(level, msg, *args)

    def _left_out(self, args: tuple[object, ...]) -> int | None:
        """None: say nothing (the same failure was said less than `quiet_s` ago); else how
        many like it went unsaid before this one."""
        client = str(args[1]) if len(args) > 1 else ""
        text = str(args[2]) if len(args) > 2 else ""
        # The same failure of the same connection: the line but its numbers (the time in
        # state, the port, the broker id), so "Disconnected" still shows beside "refused".
        key = (client, _DIGITS.sub("", text))
        now = self._clock()
        with self._lock:
            said = self._said.get(key)
            if said is not None and now - said[0] < self._quiet_s:
                self._said[key] = (said[0], said[1] + 1)
                return None
            if len(self._said) > 1024:  # clients come and go (consumers replaced on a fence)
                self._said.clear()
            self._said[key] = (now, 0)
            return said[1] if said is not None else 0


CLIENT_LOG = ClientLog()

IDLE_POLL_S = 5.0
"""How often an idle producer's poller serves callbacks (error reports) with nothing in flight."""


# Broker-side failures that say nothing about the message: "Unknown broker error" is what
# Tansu answers while its object store is down. As permanent errors they dead-lettered good
# messages and ended consumer loops and the scheduler's outbox relay (fault test: object
# store restarted mid-run); the broker recovers, so they are retried instead.
_RETRY_ANYWAY = frozenset({KafkaError.UNKNOWN})


# What a client that librdkafka has declared broken for good reports. Only the fatal error
# itself has fatal() set (the producer's poll() raises it); the consumer's poll() returns it
# as _FATAL with fatal() False, and after it the producer's produce() raises _FATAL, queued
# messages may fail with _PURGE_QUEUE (this code never purges) and in-flight ones fail with
# the broker's idempotence error, none flagged fatal. As permanent errors these
# dead-lettered good messages. Seen with confluent-kafka 2.16 against librdkafka's mock
# broker answering OUT_OF_ORDER_SEQUENCE_NUMBER (tests/unit/kafka/mock_cluster.py).
_FATAL_CODES = frozenset(
    {
        KafkaError._FATAL,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        # The idempotent producer's state (id, epoch, sequence) is lost, not the message bad.
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.PRODUCER_FENCED,
    }
)


def _is_fatal(err: KafkaError) -> bool:
    return bool(err.fatal()) or err.code() in _FATAL_CODES


def _describe(err: KafkaError) -> str:
    return f"kafka: {err.name()}: {err.str()}"


def _error(err: KafkaError, topic: str | None = None) -> Exception:
    # Refused by the broker (credentials, certificate, ACL): one clear error, never a
    # reason to dead-letter (imagegen/kafka/access.py).
    if (denied := ACCESS.refusal(err, topic=topic)) is not None:
        return denied
    if _is_fatal(err):
        return FatalClientError(_describe(err))
    retryable = err.retriable() or err.code() in _RETRY_ANYWAY
    cls = RetryableError if retryable else PermanentError
    return cls(_describe(err))


class KafkaPublisher:
    """Idempotent producer; delivery reports are served on the event loop when librdkafka
    wakes it (imagegen/kafka/wakeup.py), else by a background thread.

    After a fatal error librdkafka's producer never works again: the publisher keeps the
    first one, fails every publish (and ping) with it at once from then on, and calls
    `on_fatal` once - from the poller thread or the event loop, so it must be thread-safe.
    """

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        extra: dict[str, Any] | None = None,
        *,
        on_fatal: Callable[[FatalClientError], None] | None = None,
        wakeup: bool = True,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            # Sent at once: a lone message (every hop of one image) pays no wait, and what
            # piles up while a request is in flight still travels as one batch
            # (bench/kafka_linger.py: p50 hop 2.9-4.9 ms at 0 vs 5.8-8.8 ms at 2, bursts no
            # slower).
            "linger.ms": 0,
            "message.max.bytes": 1_000_000,
            "delivery.timeout.ms": 30_000,
            "logger": CLIENT_LOG,
        }
        config.update(extra or {})
        self._producer = _Producer(config)
        self._on_fatal = on_fatal
        self._fatal: str | None = None
        self._fatal_lock = threading.Lock()
        self._running = True
        self._wake = threading.Event()  # set by each send and by close
        self._poller: threading.Thread | None = None
        # Delivery reports and client errors are served on the loop, woken by librdkafka
        # through a pipe (imagegen/kafka/wakeup.py); without it, by a thread.
        self._wakeup = attach(self._producer, config) if wakeup else None
        self._watching: asyncio.AbstractEventLoop | None = None
        self._backstop: asyncio.TimerHandle | None = None
        if self._wakeup is None:
            self._start_poller()
        else:
            with contextlib.suppress(RuntimeError):  # else from the first send or ping
                self._watch(asyncio.get_running_loop())

    def _start_poller(self) -> None:
        self._poller = threading.Thread(
            target=self._poll_forever, name="kafka-producer", daemon=True
        )
        self._poller.start()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve the producer's queue on `loop` (the caller's) when librdkafka wakes it."""
        if self._watching is loop or self._poller is not None or self._wakeup is None:
            return
        if self._watching is not None and not self._watching.is_closed():
            # Sends from a second loop while the first lives: a thread serves them all.
            self._start_poller()
            return
        self._watching = loop
        self._wakeup.watch(loop, self._serve)

    def _arm_backstop(self, loop: asyncio.AbstractEventLoop) -> None:
        """A poll every IDLE_POLL_S while messages are in flight, whatever the pipe says: a
        wake-up lost for any reason delays their reports by that much, never for ever."""
        if self._backstop is None and self._wakeup is not None and not self._wakeup.closed:
            self._backstop = loop.call_later(IDLE_POLL_S, self._backstop_poll, loop)

    def _backstop_poll(self, loop: asyncio.AbstractEventLoop) -> None:
        self._backstop = None
        self._serve()
        if len(self._producer) > 0:
            self._arm_backstop(loop)

    def _serve(self) -> None:
        """Delivery reports and errors that woke the loop: each settles its send here."""
        if self._wakeup is None:
            return
        self._wakeup.clear()
        try:
            self._poll_once(0)
        except Exception:
            # A callback that raised stops librdkafka serving the rest, which stay queued:
            # with nothing written for them, only a poll of ours gets them out.
            log.exception("event=producer_callback_failed")
            self._wakeup.nudge()

    def _poll_forever(self) -> None:
        while self._running:
            self._wake.clear()
            # Delivery reports and callbacks not yet served count too: busy until all are.
            busy = len(self._producer) > 0
            # At rest there is no report to serve: wait for the next send (or close) instead
            # of polling, which wakes this thread five times a second (confluent-kafka polls
            # in 200 ms pieces) - about 0.3 ms of CPU a second per idle process
            # (bench/idle_threads.py). A poll every IDLE_POLL_S still serves the error
            # callback (a login refused at rest reaches readiness within that).
            if not busy and self._wake.wait(IDLE_POLL_S):
                continue
            # Returns as soon as a delivery report is due; the timeout only bounds how long
            # close() waits for this thread.
            self._poll_once(0.5 if busy else 0)

    def _poll_once(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            # poll() raises the fatal error. Uncaught, it ended the poller thread, and every
            # publish then waited for ever for a delivery report nobody served.
            err = exc.args[0]
            if _is_fatal(err):
                self._failed(err)
            else:
                log.warning("event=producer_error error=%s", err)

    @property
    def fatal(self) -> FatalClientError | None:
        """The error that made this producer unusable, or None while it works."""
        return None if self._fatal is None else FatalClientError(self._fatal)

    def _failed(self, err: KafkaError, topic: str | None = None) -> Exception:
        """The exception for `err`; a fatal one also marks this producer unusable."""
        broken = self._fatal
        if broken is not None:  # whatever failed after it, failed because of it
            return FatalClientError(broken)
        if not _is_fatal(err):
            return _error(err, topic)
        with self._fatal_lock:
            first = self._fatal is None
            if first:
                self._fatal = _describe(err)
            fatal = FatalClientError(self._fatal or _describe(err))
        if first:
            log.error("event=producer_fatal error=%r", str(fatal))
            if self._on_fatal is not None:
                self._on_fatal(fatal)
        return fatal

    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        await (await self.send(topic, key, value, headers))

    async def send(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        fatal = self.fatal
        if fatal is not None:
            raise fatal
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # Classified here, on the poller thread, in the order librdkafka reports: the
            # fatal error (raised by poll) is noted before the failures that follow it.
            failure = None if err is None else self._failed(err, topic)
            if failure is None:
                ACCESS.succeeded(topic=topic)

            def settle() -> None:
                if done.done():
                    return
                if failure is None:
                    done.set_result(None)
                else:
                    done.set_exception(failure)

            if _running_loop() is loop:  # served on the loop, which the pipe woke
                settle()
                return
            # A loop closed meanwhile has nobody waiting; the poller must not die of it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        all_headers = inject_trace_headers(dict(headers or {}))
        payload = encode(value)
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=payload,
                    key=key.encode() if key is not None else None,
                    headers=list(all_headers.items()),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                # The local queue is full: give the poller a moment to drain it.
                await asyncio.sleep(0.01)
            except KafkaException as exc:
                raise self._failed(exc.args[0]) from exc
        if self._poller is not None:
            self._wake.set()  # the poller serves its delivery report
        else:
            self._watch(loop)
            self._arm_backstop(loop)
        return done

    async def ping(self, timeout: float) -> None:
        """Raise unless the cluster answers a metadata request within `timeout` s (and
        this producer can still produce: metadata requests work after a fatal error)."""
        fatal = self.fatal
        if fatal is not None:
            raise fatal
        self._watch(asyncio.get_running_loop())  # a refused login at rest is heard
        try:
            await asyncio.to_thread(self._producer.list_topics, None, timeout)
        except KafkaException as exc:
            raise _error(exc.args[0]) from exc
        ACCESS.succeeded()

    async def close(self) -> None:
        remaining = await asyncio.to_thread(self._producer.flush, 10.0)
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None
        if self._wakeup is not None:
            self._wakeup.close()
        self._running = False
        self._wake.set()
        if self._poller is not None:
            await asyncio.to_thread(self._poller.join, 2.0)
        if remaining:
            log.warning("event=producer_close_unflushed remaining=%d", remaining)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _text(raw: str | bytes | None) -> str:
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else raw.decode(errors="replace")


def _headers(msg: Message) -> dict[str, str]:
    raw: Any = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {str(k): _text(v) for k, v in pairs}


def _record(msg: Message) -> Record:
    raw_key = msg.key()
    value = msg.value()
    return Record(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=_text(raw_key) if raw_key is not None else None,
        value=value.encode() if isinstance(value, str) else (value or b""),
        headers=_headers(msg),
        native=msg,
        timestamp=_timestamp(msg),
    )


def _timestamp(msg: Message) -> float | None:
    kind, millis = msg.timestamp()
    return millis / 1000 if kind != TIMESTAMP_NOT_AVAILABLE and millis > 0 else None


def _next_position(msg: Message) -> TopicPartition:
    """Where the group resumes after `msg` (with its leader epoch, as a message commit has)."""
    position = (msg.offset() or 0) + 1
    epoch = msg.leader_epoch()
    if epoch is None:
        return TopicPartition(msg.topic() or "", msg.partition() or 0, position)
    return TopicPartition(msg.topic() or "", msg.partition() or 0, position, leader_epoch=epoch)


_NOT_OURS = frozenset({KafkaError._STATE, KafkaError._UNKNOWN_PARTITION})
"""store_offsets errors for a partition no longer assigned to this member."""


THREAD_POLL_S = 2.0
"""The longest one poll blocks a thread (without the wake-up pipe): a longer poll timeout
is waited in pieces, so that `interrupt` ends it within this."""


class KafkaConsumer:
    """A group member that only commits what the caller says is durably handled."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: list[str],
        *,
        client_id: str = "imagegen",
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int | None = None,
        fetch_wait_max_ms: int = 2000,
        commit_interval_ms: int = 5000,
        group_instance_id: str | None = None,
        extra: dict[str, Any] | None = None,
        previous_groups: dict[str, str] | None = None,
        wakeup: bool = True,
    ) -> None:
        """`previous_groups` (topic -> group id): topics this group took over from another
        group, started where that group left off (imagegen/kafka/handover.py). `wakeup`:
        polls are served on the event loop when librdkafka says a record (or a rebalance)
        is waiting (imagegen/kafka/wakeup.py); False, or where that cannot be set up: a
        thread blocks in each poll."""
        self._interval_ms = commit_interval_ms
        self._group = group_id
        self._static = bool(group_instance_id)
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "client.id": client_id,
            # `commit()` stores a handled record's offset; librdkafka commits what is stored
            # every `commit_interval_ms`, on a rebalance and on close - never a record the
            # caller has not handled. 0: one synchronous commit per record instead.
            "enable.auto.commit": commit_interval_ms > 0,
            "auto.commit.interval.ms": max(commit_interval_ms, 1),
            "enable.auto.offset.store": False,
            # Never "latest": a new group must see what was produced before it joined.
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_interval_ms or heartbeat_default(session_timeout_ms),
            "max.poll.interval.ms": 600_000,
            "fetch.wait.max.ms": fetch_wait_max_ms,
            "logger": CLIENT_LOG,
        }
        if group_instance_id:
            # Static membership: see imagegen/kafka/membership.py.
            config["group.instance.id"] = group_instance_id
        config.update(extra or {})
        self._consumer = _Consumer(config)
        self._wakeup = attach(self._consumer, config) if wakeup else None
        self.handover = Handover(config, previous_groups) if previous_groups else None
        # Revoked partitions' offsets are committed as the revocation ends: what was handled
        # but is still queued is stored first (the callback runs inside a poll, on its thread).
        revoked = self._on_revoke
        if self.handover is None:
            self._consumer.subscribe(topics, on_revoke=revoked)
        else:
            self._consumer.subscribe(topics, on_assign=self.handover.on_assign, on_revoke=revoked)
        # Every call into librdkafka's consumer is made holding this. confluent-kafka lets one
        # thread at a time into a consumer: a call beside a poll in flight spins on 1 ms
        # sleeps (holding its thread, the event loop's for a store) until the poll returns,
        # which at a trickle is the poll's whole timeout.
        self._lock = threading.Lock()
        # Handled records whose offsets are not stored yet: stored at once where nobody
        # polls, else by the polling thread around its poll (`_store_queued`).
        self._queued: list[Message] = []
        self._queue_lock = threading.Lock()
        self._closed = False
        # Set once poll() returned a fatal error (a static member fenced by a newer one).
        self._fatal = False
        # Set by interrupt(): the poll in flight (or the next) returns what it has.
        self._interrupted = False

    def _poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        with self._lock:
            return self._take(max_records, timeout)

    def _take(self, max_records: int, timeout: float) -> list[Message]:
        """Up to `max_records` records, waiting up to `timeout` for the first; the caller
        holds `_lock`."""
        self._store_queued()
        try:
            first = self._consumer.poll(timeout)
            if first is None:
                return []
            if max_records <= 1:
                return [first]
            # consume() waits its whole timeout for a full batch: with 0 it only takes
            # what has arrived already, so a lone record is never held back.
            return [first, *self._consumer.consume(max_records - 1, 0)]
        finally:
            self._store_queued()  # what lanes handled while this poll waited

    def interrupt(self) -> None:
        """End the poll in flight (or the next): on the event loop at once; a poll blocked
        in a thread (no wake-up pipe) at the end of its current `THREAD_POLL_S`."""
        self._interrupted = True
        if self._wakeup is not None:
            self._wakeup.nudge()

    def _was_interrupted(self) -> bool:
        interrupted, self._interrupted = self._interrupted, False
        return interrupted

    async def _next(self, max_records: int, timeout: float) -> list[Message]:
        wakeup = self._wakeup
        deadline = time.monotonic() + timeout
        while True:
            if wakeup is None:
                # In pieces, so that an interrupt is seen within one.
                piece = min(max(deadline - time.monotonic(), 0), THREAD_POLL_S)
                msgs = await asyncio.to_thread(self._poll_batch, max_records, piece)
                if msgs or time.monotonic() >= deadline or self._was_interrupted():
                    return msgs
                continue
            if wakeup.closed:  # closing: one last look, which waits for no record
                return await asyncio.to_thread(self._poll_batch, max_records, 0)
            wakeup.clear()
            # Without waiting, on the loop: rebalance callbacks run here too (a handover's
            # offset lookup blocks the loop for its round trip, once per assignment).
            if self._lock.acquire(blocking=False):
                try:
                    msgs = self._take(max_records, 0)
                finally:
                    self._lock.release()
            else:  # a commit or the close holds the consumer: never wait for it on the loop
                msgs = await asyncio.to_thread(self._poll_batch, max_records, 0)
            left = deadline - time.monotonic()
            if msgs or left <= 0 or self._was_interrupted():
                return msgs
            await wakeup.wait(left)

    async def poll(self, timeout: float) -> Record | None:
        records = await self.poll_batch(1, timeout)
        return records[0] if records else None

    async def poll_batch(self, max_records: int, timeout: float) -> list[Record]:
        msgs = await self._next(max_records, timeout)
        # A fatal error raises here, before any record of the batch is handed over: none of
        # them is handled, none committed, and the next owner gets them all again.
        accepted = [self._accept(msg) for msg in msgs]
        return [record for record in accepted if record is not None]

    def _accept(self, msg: Message) -> Record | None:
        """The record `msg` carries, or None for an event (logged, or raised when fatal)."""
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            if ACCESS.note(err, group=self._group) is None:  # else logged, and readiness says
                log.warning("event=consumer_error error=%s", err)
            if _is_fatal(err):  # e.g. a static member fenced; returned as _FATAL, not fatal()
                self._fatal = True
                raise _error(err)
            return None
        ACCESS.succeeded(topic=msg.topic(), group=self._group)
        return _record(msg)

    def _commit(self, msgs: Sequence[Message]) -> None:
        offsets = [_next_position(m) for m in msgs]
        with self._lock:
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def _store_queued(self) -> None:
        """Store the queued offsets; the caller holds `_lock` (or runs inside a poll)."""
        with self._queue_lock:
            queued, self._queued = self._queued, []
        if self._closed:
            return  # close() stored what was queued before it closed
        for msg in queued:
            try:
                self._consumer.store_offsets(message=msg)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                # Revoked while in flight: its new owner gets it again (handlers are
                # idempotent), and the commit is not ours to make. Anything else leaves the
                # offset unstored: redelivered, never skipped.
                level = logging.WARNING if err.code() in _NOT_OURS else logging.ERROR
                log.log(
                    level,
                    "event=offset_not_stored topic=%s partition=%s offset=%s error=%s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    err.name(),
                )

    def _on_revoke(self, _consumer: _Consumer, _partitions: list[TopicPartition]) -> None:
        self._store_queued()

    async def commit(self, record: Record) -> None:
        await self.commit_batch([record])

    async def commit_batch(self, records: Sequence[Record]) -> None:
        if self._interval_ms > 0:
            # Local only (the periodic commit sends them), and never a wait for a poll in
            # flight: stored now if nobody polls, else by the polling thread.
            with self._queue_lock:
                self._queued.extend(record.native for record in records)
            if self._lock.acquire(blocking=False):
                try:
                    self._store_queued()
                finally:
                    self._lock.release()
            return
        if records:
            try:
                await asyncio.to_thread(self._commit, [r.native for r in records])
            except KafkaException as exc:
                raise _error(exc.args[0]) from exc

    def _leave(self, timeout: float = 5.0) -> None:
        """Leave the group now. A static member's close() does not (KIP-345), which would
        keep its partitions idle for the session timeout; an unsubscribe does, once the
        unassign it starts is served by a poll (and commits the stored offsets first)."""
        self._consumer.unsubscribe()
        deadline = time.monotonic() + timeout
        while self._consumer.assignment() and time.monotonic() < deadline:
            self._consumer.poll(0.05)  # nothing is assigned: nothing is delivered

    async def close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.close()  # first: librdkafka's close needs its queue back

        def _close() -> None:
            # With auto commit on, close() commits the stored offsets first (and so does the
            # unassign that an unsubscribe makes).
            with self._lock, contextlib.suppress(KafkaException, RuntimeError):
                self._store_queued()
                self._closed = True
                # A fenced member is no longer ours to leave (the newer instance holds it),
                # and its assignment never empties: the leave waited its whole 5 s, which
                # every consumer replaced after a broker restart paid.
                if self._static and not self._fatal:
                    self._leave()
                self._consumer.close()

        await asyncio.to_thread(_close)
