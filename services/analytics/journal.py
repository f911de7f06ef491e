"""The journal: what each record of the events topic added, keyed by its position.

faust writes each table change as its own changelog message, and commits the consumed
offsets on its own clock; a crash between the two left windows short (changes not yet
sent, offsets committed: seen with `exactly_once`, whose commit does not wait for the
table producer) or could count part of an event twice (`at_least_once`: some of an
event's table changes sent, its offset not committed). So the one changelogged table is
this journal: one message per record, keyed `<partition>:<offset>`, holding everything
that record added (observations, its job's new state, its event id). One message is
written whole or not at all; a redelivered record whose position is in the journal is
skipped; and the windows, totals, job states and seen ids are rebuilt from the journal
when the service starts (`replay`), so they equal what was counted before the crash.
"""

from __future__ import annotations

from typing import Any

from services.analytics.memory import MemoryStore
from services.analytics.pipeline import apply

Entry = dict[str, Any]


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
