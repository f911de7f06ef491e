"""Dead letters for operators: list them, and re-drive them to the topic they failed on.

Reading: the whole dead-letter topic from the beginning, every time, by a consumer with a
fresh group id that never commits. Partitions are assigned by hand (no group join to wait
for) and reading stops after `idle_timeout` seconds without a message, not at the high
watermark: Tansu reports watermarks wrongly, and an operator tool must not depend on them.

Re-driving republishes the original key and value, and the original headers minus the
dead-letter ones (`x-error-*`, `x-original-*`, `x-failed-*`, `x-attempts`), to the
original topic, with `x-redriven-from` naming the dead letter. Then it appends a *marker*
to the dead-letter topic itself (header `x-redrive-of: topic:partition:offset` of the
original message). Why markers in the topic rather than a local state file: every
operator, on any machine or pod, reading the same topic sees the same history, it needs
no new topic or storage, and a marker lives as long as the dead letters it refers to
(same retention). Markers are keyed by the *original* coordinates, so duplicate dead
letters of one message (the dead-letter publish is at-least-once) count as one, while a
re-driven message that fails again gets new coordinates and can be re-driven again.
The marker is written after the republish: a crash in between re-drives again next time
(handlers are idempotent) instead of losing the message. Two operators re-driving the
same letter at the same moment can both succeed; the handlers' idempotency covers that.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import ValidationError

from imagegen.errors import PermanentError
from imagegen.kafka.access import ACCESS
from imagegen.kafka.confluent import _record as record_of
from imagegen.kafka.ports import Publisher, Record
from schemas.deadletter import (
    HEADER_REDRIVE_OF,
    HEADER_REDRIVEN_AT,
    HEADER_REDRIVEN_BY,
    HEADER_REDRIVEN_FROM,
    DeadLetterHeaders,
)

_DEAD_LETTER_HEADERS = frozenset(
    DeadLetterHeaders(
        error_type="",
        error_message="",
        original_topic="",
        original_partition=0,
        original_offset=0,
        failed_by="",
        failed_at="",
        attempts=1,
    ).to_headers()
)


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message; `id` (`partition:offset` in the dead-letter topic) names it."""

    record: Record
    info: DeadLetterHeaders | None
    """None when the headers do not say where the message came from (it cannot be re-driven)."""
    redriven_at: str | None = None
    redriven_by: str | None = None

    @property
    def id(self) -> str:
        return f"{self.record.partition}:{self.record.offset}"

    @property
    def origin(self) -> str | None:
        """`topic:partition:offset` of the original message."""
        if self.info is None:
            return None
        i = self.info
        return f"{i.original_topic}:{i.original_partition}:{i.original_offset}"

    @property
    def original_topic(self) -> str | None:
        return self.info.original_topic if self.info else None


@dataclass(frozen=True)
class RedriveResult:
    redriven: list[DeadLetter]
    refused: list[tuple[DeadLetter, str]]


def _parse(record: Record) -> DeadLetterHeaders | None:
    try:
        return DeadLetterHeaders.from_headers(record.headers)
    except (KeyError, ValueError, ValidationError):
        return None


def scan(records: Iterable[Record]) -> list[DeadLetter]:
    """Dead letters in topic order, each with its re-drive status folded in from markers."""
    letters: list[DeadLetter] = []
    markers: dict[str, tuple[str, str]] = {}
    for record in records:
        origin = record.headers.get(HEADER_REDRIVE_OF)
        if origin is not None:
            markers[origin] = (
                record.headers.get(HEADER_REDRIVEN_AT) or "(time unknown)",
                record.headers.get(HEADER_REDRIVEN_BY, ""),
            )
        else:
            letters.append(DeadLetter(record=record, info=_parse(record)))
    letters.sort(key=lambda d: (d.record.partition, d.record.offset))
    return [
        replace(d, redriven_at=markers[d.origin][0], redriven_by=markers[d.origin][1])
        if d.origin in markers
        else d
        for d in letters
    ]


def select(
    letters: Sequence[DeadLetter],
    *,
    ids: Sequence[str] = (),
    topic: str | None = None,
    everything: bool = False,
) -> list[DeadLetter]:
    """The letters an operator named (`ids`) or all of them (`everything`), of `topic` only
    when given. Unknown ids raise PermanentError naming them: nothing is re-driven then."""
    if bool(ids) == everything:
        raise PermanentError("name dead letters with --id, or pass --all (not both)")
    pool = [d for d in letters if topic is None or d.original_topic == topic]
    if everything:
        return pool
    by_id = {d.id: d for d in pool}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        where = f" of topic {topic}" if topic else ""
        raise PermanentError(f"--id: no dead letter{where} with id {', '.join(unknown)}")
    return [by_id[i] for i in dict.fromkeys(ids)]


def republished_headers(letter: DeadLetter) -> dict[str, str]:
    """The original headers: dead-letter ones dropped, the dead letter named."""
    headers = {k: v for k, v in letter.record.headers.items() if k not in _DEAD_LETTER_HEADERS}
    headers[HEADER_REDRIVEN_FROM] = f"{letter.record.topic}:{letter.id}"
    return headers


async def redrive(
    publisher: Publisher,
    dead_letter_topic: str,
    letters: Sequence[DeadLetter],
    *,
    by: str,
    force: bool = False,
) -> RedriveResult:
    """Republish `letters` to their original topics; refuse re-driven ones unless `force`."""
    redriven: list[DeadLetter] = []
    refused: list[tuple[DeadLetter, str]] = []
    done: set[str] = set()
    for letter in letters:
        if letter.info is None or letter.origin is None:
            refused.append((letter, "no x-original-* headers: the original topic is unknown"))
            continue
        if letter.origin in done:
            refused.append((letter, f"a duplicate of {letter.origin}, re-driven just now"))
            continue
        if letter.redriven_at and not force:
            refused.append((letter, f"re-driven already at {letter.redriven_at} (--force)"))
            continue
        record = letter.record
        await publisher.publish(
            letter.info.original_topic, record.key, record.value, republished_headers(letter)
        )
        now = datetime.now(UTC).isoformat()
        marker = {
            "redrive_of": letter.origin,
            "dead_letter": letter.id,
            "redriven_at": now,
            "redriven_by": by,
        }
        await publisher.publish(
            dead_letter_topic,
            record.key,
            json.dumps(marker).encode(),
            {HEADER_REDRIVE_OF: letter.origin, HEADER_REDRIVEN_AT: now, HEADER_REDRIVEN_BY: by},
        )
        done.add(letter.origin)
        redriven.append(replace(letter, redriven_at=now, redriven_by=by))
    return RedriveResult(redriven=redriven, refused=refused)


DLQ_READER_PREFIX = "imagegen-dlq-reader-"
"""The dead-letter reader's group ids start so (an operator's ACL: Read on this prefix); the
reader never commits, but librdkafka asks for the group's coordinator all the same."""


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    idle_timeout: float = 3.0,
    extra: dict[str, Any] | None = None,
) -> list[Record]:
    """Every record of `topic` from the beginning, until `idle_timeout` s pass without one."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        # Fresh each time and never committed: listing must not move anyone's offsets.
        "group.id": f"{DLQ_READER_PREFIX}{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }
    config.update(extra or {})
    consumer = Consumer(config)
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10)
        except KafkaException as exc:
            # A refused login or handshake reads as a timeout here; the error callback
            # (`extra`'s, see imagegen/kafka/security.py) heard why.
            denied = ACCESS.problem() or ACCESS.note(exc.args[0], topic=topic)
            raise (denied or exc) from exc
        meta = metadata.topics.get(topic)
        if (
            meta is not None
            and meta.error is not None
            and (denied := ACCESS.note(meta.error, topic=topic))
        ):
            raise denied
        if meta is None or meta.error is not None:
            raise PermanentError(f"topic {topic} is not available: {meta.error if meta else ''}")
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        )
        records: list[Record] = []
        deadline = time.monotonic() + idle_timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = consumer.poll(min(left, 0.5))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if (denied := ACCESS.note(err, topic=topic, group=config["group.id"])) is not None:
                    raise denied
                if err.code() != KafkaError._PARTITION_EOF:
                    raise PermanentError(f"reading {topic}: {err.str()}")
                continue
            records.append(record_of(msg))
            deadline = time.monotonic() + idle_timeout
        return records
    finally:
        consumer.close()


def load(
    bootstrap: str,
    dead_letter_topic: str,
    *,
    idle_timeout: float = 3.0,
    extra: dict[str, Any] | None = None,
) -> list[DeadLetter]:
    """The dead letters of `dead_letter_topic`, with their re-drive status; `extra`: the
    client's security keys (imagegen/kafka/security.py)."""
    return scan(read_topic(bootstrap, dead_letter_topic, idle_timeout=idle_timeout, extra=extra))
