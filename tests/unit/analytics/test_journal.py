"""The journal: a record counted before a crash is not counted again; views rebuild."""

from __future__ import annotations

from services.analytics.journal import record, replay
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
