"""`KpiStore` in dicts: the recount from the start of the topic, and unit tests."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from services.analytics.windows import WINDOWS


class MemoryStore:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.windows: dict[str, dict[tuple[str, float], int]] = {
            name: defaultdict(int) for name in WINDOWS
        }
        self.totals: dict[str, int] = defaultdict(int)

    def seen(self, event_id: str) -> bool:
        return event_id in self.ids

    def mark_seen(self, event_id: str) -> None:
        self.ids.add(event_id)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.jobs.get(job_id)

    def put_job(self, job_id: str, state: dict[str, Any]) -> None:
        self.jobs[job_id] = state

    def add(self, key: str, value: int, ts: float) -> None:
        for name, spec in WINDOWS.items():
            for start in spec.starts(ts):
                self.windows[name][(key, start)] += value
        self.totals[key] += value

    def window_items(self, name: str) -> list[tuple[str, float, int]]:
        return [(k, start, v) for (k, start), v in self.windows[name].items()]

    def total_items(self) -> list[tuple[str, int]]:
        return list(self.totals.items())

    def job_items(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self.jobs.items())
