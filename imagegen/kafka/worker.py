"""The consumer loop every service runs: handle, then commit; dead-letter what cannot be handled.

Records are fetched in batches where the consumer can hand them over together
(`BatchConsumer`): it waits for the first record, then takes up to `max_batch` records that
have already arrived, never waiting for more. A batch is handled in delivery order and its
offsets are committed together, once, after its records were handled.

Guarantees:
- an offset is committed only after its handler returned and the deliveries of what it
  published were reported, i.e. after its effects are durable;
  a batch commits, per partition, its last handled record, and never a record after one
  that was not handled;
- records are handled in delivery order, so each partition's (each key's) order holds;
- a topic with a batch handler gets each run of consecutive records of that topic at once
  (one database transaction); if it raises, nothing of it stayed (all or nothing), and the
  records of the run are then handled one by one by the topic's handler, with the rules
  below: a poison record is dead-lettered alone and the others still land;
- a `RetryableError` is retried with backoff for as long as the loop runs (never dead-lettered:
  a database that is down is not the message's fault); a `BrokerAccessError` (the broker
  refused a credential, a certificate or an ACL) likewise, but logged at ERROR each time:
  the record waits for an operator's fix, and readiness names it meanwhile;
- a `PermanentError` (poison included) goes to the dead-letter topic with the error in headers;
- any other exception is retried `max_attempts` times, then dead-lettered;
- a `FatalClientError` (a Kafka client broken for good) is never a reason to dead-letter,
  whether the handler, the commit or the dead-letter publish raised it: the record (and
  its batch) stays uncommitted, the loop stops and `run()` raises it, so that the process
  exits and a fresh one (with fresh clients) gets the records again;
- publishes a handler makes through a `DeferredPublisher` (imagegen/kafka/deferred.py) are
  not waited for one by one: the batch's delivery reports are awaited together before its
  offsets are committed. A failed delivery commits nothing from its record on: those records
  are handled again, one by one, with every publish awaited, so the failure meets the rules
  above exactly as if the handler had raised it (a fatal one stops the loop at once);
- `stop()` stops fetching, lets the in-flight handler finish, commits what of the batch was
  handled (the rest is redelivered to the partition's next owner), and returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from imagegen.errors import BrokerAccessError, FatalClientError, PermanentError, RetryableError
from imagegen.kafka.deferred import Deliveries, collecting
from imagegen.kafka.ports import (
    BatchConsumer,
    BatchHandler,
    Consumer,
    Handler,
    Publisher,
    Record,
    interrupt_poll,
)
from imagegen.logging_setup import log_context
from imagegen.metrics import instruments
from imagegen.telemetry import consume_span, enqueued_at
from schemas.deadletter import DeadLetterHeaders

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 100
"""Records handled (and committed) together at most: enough to amortise a transaction and a
commit over a burst, small enough that a batch handled one by one stays short."""


def ids_of(value: bytes) -> tuple[str | None, str | None]:
    """The job and user a message is about, for log lines: top-level fields of every
    contract (requests, events), or its `image` identity (jobs, images)."""
    try:
        body = json.loads(value)
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    image = body.get("image")
    source = image if isinstance(image, dict) and "job_id" not in body else body
    job_id, user_id = source.get("job_id"), source.get("user_id")
    return (
        job_id if isinstance(job_id, str) else None,
        user_id if isinstance(user_id, str) else None,
    )


_CONSUMER: ContextVar[str | None] = ContextVar("imagegen_consumer", default=None)
"""The loop whose batch handler runs, for `handling`'s span."""


@contextmanager
def handling(record: Record) -> Iterator[None]:
    """Inside a batch handler, around one record's work: its trace's process span (and its
    time on the topic) and its job and user in log lines, as a one-record handler gets."""
    job_id, user_id = ids_of(record.value)
    with (
        log_context(job_id=job_id, user_id=user_id),
        consume_span(
            f"{record.topic} process",
            record.headers,
            topic=record.topic,
            enqueued=enqueued_at(record.headers, record.timestamp),
            offset=record.offset,
            consumer=_CONSUMER.get() or "",
            attempt=1,
        ),
    ):
        yield


class ConsumerLoop:
    def __init__(
        self,
        *,
        name: str,
        consumer: Consumer,
        handlers: dict[str, Handler],
        dead_letters: Publisher,
        dead_letter_topic: str,
        max_attempts: int = 5,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        poll_timeout: float = 1.0,
        service: str | None = None,
        group: str | None = None,
        batch_handlers: dict[str, BatchHandler] | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.name = name
        # Loops are named `<service>` or `<service>-<role>` (scheduler-outcomes, ...).
        self.service = service or name.split("-", maxsplit=1)[0]
        # The consumer group a dead letter names as `failed_by` (lanes of one group share it).
        self.group = group or name
        self._consumer = consumer
        self._handlers = handlers
        self._dead_letters = dead_letters
        self._dead_letter_topic = dead_letter_topic
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._poll_timeout = poll_timeout
        self._batch_handlers = batch_handlers or {}
        self._max_batch = max(1, max_batch)
        self._stopping = asyncio.Event()
        self.handled = 0
        self.dead_lettered = 0

    def stop(self) -> None:
        """Ask the loop to stop after the message in flight; a poll waiting for one ends
        now where the consumer can end it (so long poll timeouts cost no stop time)."""
        self._stopping.set()
        interrupt_poll(self._consumer)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        log.info("event=consumer_started name=%s", self.name)
        try:
            while not self._stopping.is_set():
                records = await self._fetch()
                if not records:
                    continue
                handled = await self._handle_settled(records)
                if handled:
                    await self._commit(handled)
        except FatalClientError as exc:
            # Whatever was in flight stays uncommitted: the next owner gets it again. Not
            # marked `stopping`: that means asked to stop, and a dead loop was not.
            log.error("event=consumer_fatal name=%s error=%r", self.name, str(exc))
            raise
        finally:
            await self._consumer.close()
            log.info(
                "event=consumer_stopped name=%s handled=%d dead_lettered=%d",
                self.name,
                self.handled,
                self.dead_lettered,
            )

    async def _fetch(self) -> list[Record]:
        if self._max_batch > 1 and isinstance(self._consumer, BatchConsumer):
            return await self._consumer.poll_batch(self._max_batch, self._poll_timeout)
        record = await self._consumer.poll(self._poll_timeout)
        return [] if record is None else [record]

    async def _handle_settled(self, records: Sequence[Record]) -> list[Record]:
        """Handle `records`, then wait for their deferred deliveries; returns those that may
        be committed (a prefix, as `_handle`'s)."""
        units: list[tuple[int, Deliveries]] = []
        done = await self._handle(records, units)
        # Every unit settled, so that no report is left unread.
        settled = [(start, await deliveries.settle()) for start, deliveries in units]
        for _, error in settled:
            if isinstance(error, FatalClientError):
                raise error  # nothing of the batch is committed, as if a handler raised it
        failed_at: int | None = None
        failure: BaseException | None = None
        for start, error in settled:
            # Skipped: delivered, or from a record given up on (not committed anyway).
            if error is not None and start < len(done) and (failed_at is None or start < failed_at):
                failed_at, failure = start, error
        if failed_at is None:
            return done
        again = done[failed_at:]
        log.warning(
            "event=delivery_failed name=%s topic=%s offset=%d records=%d error=%r",
            self.name,
            again[0].topic,
            again[0].offset,
            len(again),
            str(failure) or type(failure).__name__,
        )
        self.handled -= len(again)
        # Idempotent handlers: handled again, each publish awaited, with the usual rules.
        return done[:failed_at] + await self._handle(again)

    async def _handle(
        self, records: Sequence[Record], units: list[tuple[int, Deliveries]] | None = None
    ) -> list[Record]:
        """Handle `records` in order; returns those handled, a prefix of them (shorter only
        when the loop is stopping). With `units`, publishes are deferred: each handler call
        leaves its delivery reports there, with the index in the result of its first record."""

        def unit() -> Deliveries | None:
            if units is None:
                return None
            deliveries = Deliveries()
            units.append((len(done), deliveries))
            return deliveries

        done: list[Record] = []
        at = 0
        while at < len(records):
            if done and self._stopping.is_set():
                break  # the rest is redelivered; the in-flight work is done
            run = self._run_from(records, at)
            if len(run) > 1 and await self._process_batch(run, unit()):
                done.extend(run)
                at += len(run)
                continue
            for record in run:
                if done and self._stopping.is_set():
                    return done
                if not await self._process(record, unit()):
                    return done  # given up on while stopping: nothing after it commits
                done.append(record)
            at += len(run)
        return done

    def _run_from(self, records: Sequence[Record], at: int) -> Sequence[Record]:
        """The records from `at` that one batch handler takes at once: consecutive records
        of its topic; just the one record when its topic has no batch handler."""
        topic = records[at].topic
        if topic not in self._batch_handlers:
            return records[at : at + 1]
        end = at + 1
        while end < len(records) and records[end].topic == topic:
            end += 1
        return records[at:end]

    async def _process_batch(self, run: Sequence[Record], deliveries: Deliveries | None) -> bool:
        """One try of the topic's batch handler; False (nothing of it stayed) when it raised."""
        handler = self._batch_handlers[run[0].topic]
        token = _CONSUMER.set(self.name)
        try:
            with log_context(service=self.service), collecting(deliveries):
                await handler(run)
        except FatalClientError:
            raise
        except Exception as exc:
            log.warning(
                "event=batch_handled_one_by_one name=%s topic=%s records=%d error=%r",
                self.name,
                run[0].topic,
                len(run),
                str(exc) or type(exc).__name__,
            )
            return False
        finally:
            _CONSUMER.reset(token)
        self.handled += len(run)
        return True

    async def _commit(self, records: Sequence[Record]) -> None:
        """Commit the last of `records` in each partition (all of them handled)."""
        last = {(r.topic, r.partition): r for r in records}
        latest = list(last.values())
        delay = self._backoff_initial
        while True:
            try:
                if isinstance(self._consumer, BatchConsumer):
                    await self._consumer.commit_batch(latest)
                else:
                    for record in latest:
                        await self._consumer.commit(record)
                return
            except RetryableError as exc:
                log.warning("event=commit_retry name=%s error=%s", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)

    async def _process(self, record: Record, deliveries: Deliveries | None = None) -> bool:
        """Handle one record; True when it may be committed (once `deliveries` are in)."""
        handler = self._handlers.get(record.topic)
        if handler is None:
            await self._dead_letter(record, PermanentError(f"no handler for {record.topic}"), 1)
            return True
        job_id, user_id = ids_of(record.value)
        with log_context(service=self.service, job_id=job_id, user_id=user_id):
            return await self._attempts(record, handler, deliveries)

    async def _attempts(
        self, record: Record, handler: Handler, deliveries: Deliveries | None
    ) -> bool:
        attempt = 0
        delay = self._backoff_initial
        # Time on the topic is measured once, not again on each retry.
        enqueued = enqueued_at(record.headers, record.timestamp)
        while True:
            attempt += 1
            try:
                with (
                    consume_span(
                        f"{record.topic} process",
                        record.headers,
                        topic=record.topic,
                        enqueued=enqueued if attempt == 1 else None,
                        offset=record.offset,
                        consumer=self.name,
                        attempt=attempt,
                    ),
                    collecting(deliveries),
                ):
                    await handler(record)
                self.handled += 1
                return True
            except FatalClientError:
                raise
            except PermanentError as exc:
                await self._dead_letter(record, exc, attempt)
                return True
            except BrokerAccessError as exc:
                log.error(
                    "event=handler_access_denied name=%s topic=%s offset=%d attempt=%d error=%r",
                    self.name,
                    record.topic,
                    record.offset,
                    attempt,
                    str(exc),
                )
            except RetryableError as exc:
                log.warning(
                    "event=handler_retry name=%s topic=%s offset=%d attempt=%d error=%r",
                    self.name,
                    record.topic,
                    record.offset,
                    attempt,
                    exc,
                )
            except Exception as exc:
                log.exception(
                    "event=handler_error name=%s topic=%s offset=%d attempt=%d",
                    self.name,
                    record.topic,
                    record.offset,
                    attempt,
                )
                if attempt >= self._max_attempts:
                    await self._dead_letter(record, exc, attempt)
                    return True
            if self._stopping.is_set():
                # Not committed: the message is redelivered to whoever owns it next.
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _dead_letter(self, record: Record, exc: BaseException, attempts: int) -> None:
        headers = dict(record.headers)
        headers.update(
            DeadLetterHeaders(
                error_type=type(exc).__name__,
                error_message=str(exc),
                original_topic=record.topic,
                original_partition=record.partition,
                original_offset=record.offset,
                failed_by=self.group,
                failed_at=datetime.now(UTC).isoformat(),
                attempts=attempts,
            ).to_headers()
        )
        delay = self._backoff_initial
        while True:
            try:
                await self._dead_letters.publish(
                    self._dead_letter_topic, record.key, record.value, headers
                )
                break
            except RetryableError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff_max)
        self.dead_lettered += 1
        instruments().dead_letters.add(1, {"topic": record.topic, "error_type": type(exc).__name__})
        log.error(
            "event=dead_lettered name=%s topic=%s partition=%d offset=%d error_type=%s error=%r",
            self.name,
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
            str(exc),
        )
