"""The journal: a record counted before a crash is not counted again; views rebuild."""

from __future__ import annotations

import json
from typing import Any

from services.analytics.journal import (
    MESSAGE_RECORDS,
    Entry,
    Journal,
    position,
    record,
    replay,
)
from services.analytics.memory import MemoryStore
from services.analytics.pipeline import apply
from tests.unit.analytics.events_factory import BASE, encoded, job_events


def _records() -> list[bytes]:
    return [
        *encoded(job_events("j1", "alice", "realtime", images=3, fail={1})),
        *encoded(job_events("j2", "bob", "economy", images=2, flagged={1})),
    ]


def test_views_rebuilt_from_the_journal_equal_direct_counting() -> None:
    records = _records()
    records.insert(4, records[2])  # a redelivered copy (same id) in the topic
    records.insert(6, b"garbage")
    direct = MemoryStore()
    for raw in records:
        apply(direct, raw, BASE.timestamp())
    views, journal = MemoryStore(), {}
    for offset, raw in enumerate(records):
        _, entry = record(views, raw, BASE.timestamp())
        journal[f"0:{offset}"] = entry
        replay(views, entry)
    rebuilt = MemoryStore()
    for entry in journal.values():
        replay(rebuilt, entry)
    for store in (views, rebuilt):
        assert store.windows == direct.windows
        assert store.totals == direct.totals
        assert store.jobs == direct.jobs
        assert store.ids == direct.ids


def test_recording_changes_nothing_until_replayed() -> None:
    views = MemoryStore()
    outcome, entry = record(views, _records()[0], BASE.timestamp())
    assert outcome == "counted"
    assert not views.totals and not views.jobs and not views.ids
    assert entry["i"] and entry["j"][0] == "j1" and entry["a"]


class _Changelog:
    """The journal's changelog as a broker would keep it: messages in the order sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, Entry]] = []

    def send(self, partition: int, key: str, message: Entry) -> None:
        # Stored as the broker returns it: JSON, as faust's table serializer writes it.
        self.sent.append((partition, key, json.loads(json.dumps(message))))

    def read_back(self, upto: int | None = None) -> dict[str, Any]:
        """The table's data after recovery from the first `upto` messages."""
        return {key: message for _, key, message in self.sent[:upto]}


def _partitioned() -> list[tuple[int, int, bytes]]:
    """(partition, offset, record) of two partitions, interleaved as a consumer sees them."""
    jobs = [
        encoded(job_events("j1", "alice", "realtime", images=3, fail={1})),
        encoded(job_events("j2", "bob", "economy", images=2, flagged={1})),
    ]
    jobs[0].insert(3, jobs[0][1])  # a redelivered copy (same id) in the topic
    jobs[1].insert(2, b"garbage")
    out = []
    for i in range(max(map(len, jobs))):
        for partition, records in enumerate(jobs):
            if i < len(records):
                out.append((partition, i, records[i]))
    return out


def _direct(records: list[tuple[int, int, bytes]]) -> MemoryStore:
    store = MemoryStore()
    for _, _, raw in records:
        apply(store, raw, BASE.timestamp())
    return store


def _same(store: MemoryStore, want: MemoryStore) -> None:
    assert store.windows == want.windows
    assert store.totals == want.totals
    assert store.jobs == want.jobs
    assert store.ids == want.ids


def _count(journal: Journal, batch: list[tuple[int, int, bytes]]) -> list[str]:
    try:
        return [journal.count(p, o, raw, BASE.timestamp()) for p, o, raw in batch]
    finally:
        journal.flush()


def test_a_batch_is_one_message_per_partition_and_rebuilds_the_same_views() -> None:
    records = _partitioned()
    changelog = _Changelog()
    local: dict[str, Any] = {}
    journal = Journal(lambda: local, changelog.send)
    _count(journal, records[:7])
    _count(journal, records[7:])
    assert [(p, key) for p, key, _ in changelog.sent] == [
        (0, "0:0"),
        (1, "1:0"),
        (1, "1:3"),
        (0, "0:4"),
    ]
    want = _direct(records)
    _same(journal.views, want)
    restored = Journal(changelog.read_back, changelog.send)
    restored.rebuild()
    _same(restored.views, want)
    assert restored.status()["journal_records"] == len(records)
    assert restored.status()["journal_messages"] == 4


def test_killed_after_a_journalled_batch_then_redelivered_counts_each_record_once() -> None:
    """Kill after the second batch's messages were written but before its offsets were
    committed; the restarted journal, read back from the changelog, gets every record
    again from the committed offsets (the first batch's ends) and counts only the rest."""
    records = _partitioned()
    changelog = _Changelog()
    local: dict[str, Any] = {}
    journal = Journal(lambda: local, changelog.send)
    _count(journal, records[:5])  # committed
    _count(journal, records[5:9])  # journalled, offsets not committed
    _count(journal, records[9:11])  # counted in memory; killed before its message went out
    del journal
    written = len(changelog.sent) - 2
    changelog.sent = changelog.sent[:written]  # the lost batch's messages never arrived
    restored = Journal(changelog.read_back, changelog.send)
    outcomes = _count(restored, records[5:])
    assert outcomes[:4] == ["journalled"] * 4
    assert "journalled" not in outcomes[4:]
    assert restored.skipped == 4
    _same(restored.views, _direct(records))
    again = Journal(changelog.read_back, changelog.send)
    again.rebuild()
    _same(again.views, _direct(records))


def test_messages_of_one_record_each_are_still_read() -> None:
    """Journals written before batching: one message per record, keyed by its position."""
    records = _partitioned()
    views, old = MemoryStore(), {}
    for partition, offset, raw in records[:6]:
        _, entry = record(views, raw, BASE.timestamp())
        old[position(partition, offset)] = entry
        replay(views, entry)
    changelog = _Changelog()
    journal = Journal(lambda: old, changelog.send)
    outcomes = _count(journal, records)
    assert outcomes[:6] == ["journalled"] * 6
    _same(journal.views, _direct(records))


def test_a_big_batch_of_one_partition_is_split_into_messages_of_bounded_size() -> None:
    records = [
        (3, offset, raw)
        for offset, raw in enumerate(
            raw
            for j in range(90)
            for raw in encoded(job_events(f"j{j}", "carol", "standard", images=1))
        )
    ]
    assert len(records) > 2 * MESSAGE_RECORDS
    changelog = _Changelog()
    local: dict[str, Any] = {}
    journal = Journal(lambda: local, changelog.send)
    _count(journal, records)
    assert list(local) == [key for _, key, _ in changelog.sent]
    keys = [key for _, key, _ in changelog.sent]
    assert keys == [f"3:{o}" for o in range(0, len(records), MESSAGE_RECORDS)]
    assert all(len(m["r"]) <= MESSAGE_RECORDS for _, _, m in changelog.sent)
    restored = Journal(changelog.read_back, changelog.send)
    restored.rebuild()
    _same(restored.views, _direct(records))
