"""One record of the events topic into the KPI store: validate, deduplicate, derive, add."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol, get_args

from pydantic import ValidationError

from schemas.events import EVENT_ADAPTER, Event
from services.analytics.kpis import JobState, derive
from services.analytics.windows import encode

log = logging.getLogger(__name__)

KNOWN_TYPES = frozenset(
    get_args(member.model_fields["type"].annotation)[0] for member in get_args(get_args(Event)[0])
)


class KpiStore(Protocol):
    """Where KPIs are kept: faust's tables in the service, dicts in a recount."""

    def seen(self, event_id: str) -> bool:
        """True when an event with this id was counted already."""

    def mark_seen(self, event_id: str) -> None:
        """Remember that this event id is counted."""

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's state as last put, or None."""

    def put_job(self, job_id: str, state: dict[str, Any]) -> None:
        """Keep the job's state."""

    def add(self, key: str, value: int, ts: float) -> None:
        """Add `value` to `key` in each window covering `ts` and in the totals."""


def classify(raw: bytes | None) -> tuple[dict[str, Any] | None, str]:
    """The validated event as a dict, or None and why not ("malformed" or "unknown")."""
    try:
        body = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError):
        return None, "malformed"
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return None, "malformed"
    if body["type"] not in KNOWN_TYPES:
        return None, "unknown"
    try:
        event = EVENT_ADAPTER.validate_python(body)
    except ValidationError:
        return None, "malformed"
    return event.model_dump(), ""


def apply(store: KpiStore, raw: bytes | None, record_ts: float) -> str:
    """Count one record; returns what it was: "counted", "duplicate", "malformed" or
    "unknown". Never raises for bad input (the record is counted as rejected and skipped)."""
    event, reason = classify(raw)
    if event is None:
        store.add(encode("rejected", {"reason": reason}), 1, record_ts)
        log.warning("event=analytics_rejected reason=%s bytes=%d", reason, len(raw or b""))
        return reason
    if store.seen(event["id"]):
        store.add(encode("duplicates", {}), 1, record_ts)
        return "duplicate"
    job_id = event.get("job_id") or ""
    job = JobState.from_json(store.job(job_id)) if job_id else JobState()
    effects = derive(event, job)
    ts = event["time"].timestamp()
    for obs in effects.observations:
        store.add(obs.key, obs.value, ts)
    if job_id and effects.job_changed:
        store.put_job(job_id, job.to_json())
    store.mark_seen(event["id"])
    return "counted"
