"""The journal: what each record of the events topic added, keyed by its position.

faust writes each table change as its own changelog message, and commits the consumed
offsets on its own clock; a crash between the two left windows short (changes not yet
sent, offsets committed: seen with `exactly_once`, whose commit does not wait for the
table producer) or could count part of an event twice (`at_least_once`: some of an
event's table changes sent, its offset not committed). So the one changelogged table is
this journal, holding for each record everything it added (observations, its job's new
state, its event id). The agent counts a batch of records (what the broker handed over
together, see `Journal.flush`) and writes one message per events partition, keyed
`<partition>:<offset of its first record>`, listing each record's offset and entry. One
message is written whole or not at all, and faust's `at_least_once` commits an offset
only after the batch's messages are flushed; a redelivered record whose position is in
the journal is skipped; and the windows, totals, job states and seen ids are rebuilt
from the journal when the service starts (`Journal.rebuild`), so they equal what was
counted before the crash. Messages of one record each (`{"a", "j", "i"}`, written before
batches) are still read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from services.analytics.memory import MemoryStore
from services.analytics.pipeline import apply

Entry = dict[str, Any]
Send = Callable[[int, str, Entry], None]
"""Writes one journal message (partition, key, value) to the changelog."""

log = logging.getLogger(__name__)

MESSAGE_RECORDS = 200
"""The most records in one journal message: an entry is up to ~2 KB (a big pack's job
state), and a message must stay well under the topic's 1 MiB `max.message.bytes`."""


class _Recorder:
    """A `KpiStore` that reads the views and writes into one journal entry."""

    def __init__(self, views: MemoryStore) -> None:
        self._views = views
        self.entry: Entry = {"a": [], "j": None, "i": None}

    def seen(self, event_id: str) -> bool:
        return self._views.seen(event_id)

    def mark_seen(self, event_id: str) -> None:
        self.entry["i"] = event_id

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._views.job(job_id)

    def put_job(self, job_id: str, state: dict[str, Any]) -> None:
        self.entry["j"] = [job_id, state]

    def add(self, key: str, value: int, ts: float) -> None:
        self.entry["a"].append([key, value, ts])


def record(views: MemoryStore, raw: bytes | None, record_ts: float) -> tuple[str, Entry]:
    """What one record adds (nothing applied yet) and what it was."""
    recorder = _Recorder(views)
    outcome = apply(recorder, raw, record_ts)
    return outcome, recorder.entry


def replay(views: MemoryStore, entry: Entry) -> None:
    """Apply one journal entry to the views."""
    for key, value, ts in entry["a"]:
        views.add(key, int(value), float(ts))
    if entry.get("j"):
        job_id, state = entry["j"]
        views.put_job(job_id, state)
    if entry.get("i"):
        views.mark_seen(entry["i"])


def position(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


def entries(key: str, message: Entry) -> Iterator[tuple[int, int, Entry]]:
    """(partition, offset, entry) of each record one journal message holds."""
    partition, _, offset = key.partition(":")
    if "r" in message:
        for record_offset, entry in message["r"]:
            yield int(partition), int(record_offset), entry
    else:
        yield int(partition), int(offset), message


class Journal:
    """The views, which records they count, and the batch not yet written.

    `messages` gives the table's local data (the changelog read back at start; asked for
    when used, as faust makes it lazily); `send` writes one message to the changelog.
    """

    def __init__(self, messages: Callable[[], MutableMapping[str, Any]], send: Send) -> None:
        self._messages = messages
        self._send = send
        self.views = MemoryStore()
        self.counted: set[tuple[int, int]] = set()
        self.skipped = 0
        """Records delivered again after a restart whose counts the journal already held."""
        self._pending: dict[int, list[list[Any]]] = {}
        self.replayed = False

    def rebuild(self) -> None:
        """The views from every journal message (after recovery: every assigned partition)."""
        views, counted = MemoryStore(), set()
        for key, message in list(self._messages().items()):
            if message:
                for partition, offset, entry in entries(key, message):
                    counted.add((partition, offset))
                    replay(views, entry)
        self.views, self.counted, self._pending = views, counted, {}
        self.replayed = True
        log.info(
            "event=analytics_replayed messages=%d records=%d", len(self._messages()), len(counted)
        )

    def count(self, partition: int, offset: int, raw: bytes | None, ts: float) -> str:
        """Count one record into the views and the pending batch (`flush` writes it)."""
        if not self.replayed:
            self.rebuild()
        if (partition, offset) in self.counted:
            # Counted before a crash or rebalance; its offset was not committed yet.
            self.skipped += 1
            return "journalled"
        outcome, entry = record(self.views, raw, ts)
        replay(self.views, entry)
        self.counted.add((partition, offset))
        self._pending.setdefault(partition, []).append([offset, entry])
        return outcome

    def flush(self) -> None:
        """Write the pending batch: one message per partition. Call it before the batch's
        offsets may be committed (the agent does, before it takes the next batch)."""
        pending, self._pending = self._pending, {}
        for partition, batch in pending.items():
            for start in range(0, len(batch), MESSAGE_RECORDS):
                part = batch[start : start + MESSAGE_RECORDS]
                key, message = position(partition, part[0][0]), {"r": part}
                self._messages()[key] = message
                self._send(partition, key, message)

    def status(self) -> dict[str, int]:
        return {
            "journal_messages": len(self._messages()),
            "journal_records": len(self.counted),
            "skipped_journalled": self.skipped,
        }
