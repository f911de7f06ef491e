"""confluent-kafka adapters: an idempotent, acks=all publisher and a manual-commit consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, KafkaException, Message
from confluent_kafka import Consumer as _Consumer
from confluent_kafka import Producer as _Producer
from pydantic import BaseModel

from imagegen.errors import PermanentError, RetryableError
from imagegen.kafka.codec import encode
from imagegen.kafka.ports import Record
from imagegen.telemetry import inject_trace_headers

log = logging.getLogger(__name__)


# Broker-side failures that say nothing about the message: "Unknown broker error" is what
# Tansu answers while its object store is down. As permanent errors they dead-lettered good
# messages and ended consumer loops and the scheduler's outbox relay (fault test: object
# store restarted mid-run); the broker recovers, so they are retried instead.
_RETRY_ANYWAY = frozenset({KafkaError.UNKNOWN})


def _error(err: KafkaError) -> Exception:
    retryable = err.retriable() or err.code() in _RETRY_ANYWAY
    cls = RetryableError if retryable else PermanentError
    return cls(f"kafka: {err.name()}: {err.str()}")


class KafkaPublisher:
    """Idempotent producer; a background thread serves delivery callbacks."""

    def __init__(self, bootstrap: str, client_id: str, extra: dict[str, Any] | None = None) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "message.max.bytes": 1_000_000,
            "delivery.timeout.ms": 30_000,
        }
        config.update(extra or {})
        self._producer = _Producer(config)
        self._running = True
        self._poller = threading.Thread(
            target=self._poll_forever, name="kafka-producer", daemon=True
        )
        self._poller.start()

    def _poll_forever(self) -> None:
        while self._running:
            self._producer.poll(0.05)

    async def publish(
        self,
        topic: str,
        key: str | None,
        value: BaseModel | bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(_error(err))

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
                raise _error(exc.args[0]) from exc
        await done

    async def ping(self, timeout: float) -> None:
        """Raise unless the cluster answers a metadata request within `timeout` s."""
        try:
            await asyncio.to_thread(self._producer.list_topics, None, timeout)
        except KafkaException as exc:
            raise _error(exc.args[0]) from exc

    async def close(self) -> None:
        remaining = await asyncio.to_thread(self._producer.flush, 10.0)
        self._running = False
        await asyncio.to_thread(self._poller.join, 1.0)
        if remaining:
            log.warning("event=producer_close_unflushed remaining=%d", remaining)


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
        extra: dict[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Never "latest": a new group must see what was produced before it joined.
            "auto.offset.reset": "earliest",
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(session_timeout_ms // 3, 500),
            "max.poll.interval.ms": 600_000,
        }
        config.update(extra or {})
        self._consumer = _Consumer(config)
        self._consumer.subscribe(topics)
        self._lock = threading.Lock()  # librdkafka calls from one thread at a time

    def _poll(self, timeout: float) -> Message | None:
        with self._lock:
            return self._consumer.poll(timeout)

    async def poll(self, timeout: float) -> Record | None:
        msg = await asyncio.to_thread(self._poll, timeout)
        if msg is None:
            return None
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return None
            log.warning("event=consumer_error error=%s", err)
            if err.fatal():
                raise _error(err)
            return None
        return _record(msg)

    def _commit(self, msg: Message) -> None:
        with self._lock:
            self._consumer.commit(message=msg, asynchronous=False)

    async def commit(self, record: Record) -> None:
        try:
            await asyncio.to_thread(self._commit, record.native)
        except KafkaException as exc:
            raise _error(exc.args[0]) from exc

    async def close(self) -> None:
        def _close() -> None:
            with self._lock, contextlib.suppress(KafkaException, RuntimeError):
                self._consumer.close()

        await asyncio.to_thread(_close)
