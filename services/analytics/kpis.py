"""What each event adds to the KPIs: a pure function of the event and its job's state.

Events are keyed by job id, so one job's events arrive in order on one partition and the
job's state (its tier, when it was requested, whether an image is stored yet) is local to
that partition. Every value added is an integer (counts, milliseconds, micro-USD), so a sum
is the same whatever order partitions are read in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.analytics.windows import BUCKETS, bucket_index, encode

MICRO_USD = 1_000_000
UNKNOWN = "unknown"


@dataclass
class JobState:
    """What analytics remembers of a job (a JSON object in the jobs table)."""

    tier: str = UNKNOWN
    user: str = UNKNOWN
    requested_at: float | None = None
    """Event time of the job's first generation_queued: the POST is milliseconds before
    (the scheduler queues as it accepts); used for time to first image."""
    first_stored: bool = False
    ended_at: float | None = None
    status: str = ""
    images: dict[str, list[str]] = field(default_factory=dict)
    """image index -> [provider, model], from generation_queued (the latest attempt)."""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, value: dict[str, Any] | None) -> JobState:
        return cls(**value) if value else cls()


@dataclass(frozen=True)
class Observation:
    key: str
    value: int


@dataclass
class Effects:
    observations: list[Observation] = field(default_factory=list)
    job_changed: bool = False

    def count(self, metric: str, amount: int = 1, **labels: str) -> None:
        self.observations.append(Observation(encode(metric, labels), amount))

    def observe(self, metric: str, value: float, unit: int = 1000, **labels: str) -> None:
        """One histogram observation: its bucket and its sum (in 1/unit); the count is the
        buckets' sum."""
        bounds = BUCKETS[metric]
        index = bucket_index(bounds, value)
        self.observations += [
            Observation(encode(metric, labels, f"b{index}"), 1),
            Observation(encode(metric, labels, "sum"), round(value * unit)),
        ]


def event_time(event: dict[str, Any]) -> float:
    value = event["time"]
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _s(value: object) -> str:
    text = str(value) if value not in (None, "") else UNKNOWN
    return text.replace(",", "_").replace("=", "_").replace("{", "_").replace("}", "_")


def derive(event: dict[str, Any], job: JobState) -> Effects:
    """The observations one (valid, first-seen) event makes, updating `job` in place."""
    fx = Effects()
    kind = event["type"]
    data: dict[str, Any] = event.get("data") or {}
    ts = event_time(event)
    fx.count("events", kind=kind)
    if event.get("user_id") and job.user == UNKNOWN:
        job.user = _s(event["user_id"])
        fx.job_changed = True
    handler = _HANDLERS.get(kind)
    if handler is not None:
        handler(fx, data, job, ts)
    return fx


def _queued(fx: Effects, data: dict[str, Any], job: JobState, ts: float) -> None:
    index = str(data.get("image_index"))
    if job.requested_at is None:
        job.requested_at = ts
        job.tier = _s(data.get("tier"))
        fx.count("jobs_started", tier=job.tier)
    provider, model = _s(data.get("provider")), _s(data.get("model"))
    first = index not in job.images
    job.images[index] = [provider, model]
    fx.job_changed = True
    if first:
        fx.count("requested", tier=job.tier, provider=provider, model=model)
        fx.count("user_requested", user=job.user)


def _image(job: JobState, data: dict[str, Any]) -> tuple[str, str]:
    provider, model = job.images.get(str(data.get("image_index")), [UNKNOWN, UNKNOWN])
    return _s(data.get("provider") or provider), _s(data.get("model") or model)


def _started(fx: Effects, data: dict[str, Any], job: JobState, ts: float) -> None:
    fx.observe("queue_wait", int(data.get("queue_wait_ms") or 0) / 1000, tier=job.tier)


def _completed(fx: Effects, data: dict[str, Any], job: JobState, ts: float) -> None:
    provider, model = _image(job, data)
    seconds = int(data.get("duration_ms") or 0) / 1000
    fx.observe("image_duration", seconds, tier=job.tier, provider=provider, model=model)
    cost = round(float(data.get("cost_usd") or 0.0) * MICRO_USD)
    fx.count("cost_micro_usd", cost, provider=provider, model=model)
    fx.count("costed_images", provider=provider, model=model)
    fx.count("user_cost_micro_usd", cost, user=job.user)


def _failed(fx: Effects, data: dict[str, Any], job: JobState, ts: float) -> None:
    if not data.get("final"):
        return  # retried: the image is not failed yet
    provider, model = _image(job, data)
    error = _s(data.get("error_type"))
    fx.count("failed", tier=job.tier, provider=provider, model=model, error_type=error)
    fx.count("user_failed", user=job.user)


def _stored(fx: Effects, data: dict[str, Any], job: JobState, ts: float) -> None:
    provider, model = _image(job, data)
    fx.count("completed", tier=job.tier, provider=provider, model=model)
    fx.count("user_completed", user=job.user)
    if not job.first_stored:
        job.first_stored = True
        fx.job_changed = True
        if job.requested_at is not None:
            fx.observe("time_to_first_image", max(0.0, ts - job.requested_at), tier=job.tier)
    score = data.get("consistency_score")
    if score is not None:
        fx.observe("consistency_score", float(score), unit=1_000_000)
        fx.count("consistency_scored")
    elif data.get("not_scored_reason"):
        fx.count("consistency_not_scored", reason=reason_code(data["not_scored_reason"]))
    if data.get("flagged"):
        fx.count("consistency_flagged")


def reason_code(reason: object) -> str:
    """A not-scored reason as a label value ("no face found in the image" ->
    no_face_found_in_the_image): postprocess writes a handful of fixed sentences."""
    words = re.findall(r"[a-z0-9]+", str(reason).lower())
    return "_".join(words)[:80] or UNKNOWN


def _pack_completed(fx: Effects, data: dict[str, Any], job: JobState, ts: float) -> None:
    if job.ended_at is None:
        job.ended_at = ts
        job.status = _s(data.get("status"))
        fx.job_changed = True
        fx.count("jobs_ended", tier=job.tier, status=job.status)


def _budget_alert(fx: Effects, data: dict[str, Any], job: JobState, ts: float) -> None:
    fx.count(
        "budget_alerts",
        scope=_s(data.get("scope")),
        threshold=_s(data.get("threshold_percent")),
    )


_HANDLERS = {
    "generation_queued": _queued,
    "generation_started": _started,
    "generation_completed": _completed,
    "generation_failed": _failed,
    "image_stored": _stored,
    "pack_completed": _pack_completed,
    "budget_alert": _budget_alert,
}
