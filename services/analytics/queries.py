"""KPIs of a window from its raw counts, the product's promises, and the JSON views."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from services.analytics.kpis import MICRO_USD
from services.analytics.windows import BUCKETS, HOUR, MINUTE, WINDOWS, decode, quantile


class KpiReader(Protocol):
    def window_items(self, name: str) -> list[tuple[str, float, int]]:
        """(key, window start, value) of every retained window of `name`."""

    def total_items(self) -> list[tuple[str, int]]:
        """(key, value) since the start of the topic."""

    def job_items(self) -> list[tuple[str, dict[str, Any]]]:
        """(job id, state) of every job seen."""


class UnknownName(LookupError):
    """A window or metric that does not exist (the API answers 404 naming it)."""


Grouped = dict[str, dict[tuple[tuple[str, str], ...], dict[str, int]]]


def group(counts: Mapping[str, int]) -> Grouped:
    """metric -> labels -> part ("" for a counter; b<i>, sum, count for a histogram)."""
    out: Grouped = defaultdict(lambda: defaultdict(dict))
    for key, value in counts.items():
        metric, labels, part = decode(key)
        out[metric][tuple(sorted(labels.items()))][part] = value
    return out


def _total(g: Grouped, metric: str) -> int:
    return sum(parts.get("", 0) for parts in g.get(metric, {}).values())


def _by(g: Grouped, metric: str, label: str) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for labels, parts in g.get(metric, {}).items():
        out[dict(labels).get(label, "")] += parts.get("", 0)
    return dict(out)


def _hist(metric: str, parts: Mapping[str, int], unit: int = 1000) -> dict[str, Any]:
    bounds = BUCKETS[metric]
    counts = [parts.get(f"b{i}", 0) for i in range(len(bounds) + 1)]
    n = sum(counts)
    return {
        "count": n,
        "p50": quantile(0.5, bounds, counts),
        "p95": quantile(0.95, bounds, counts),
        "mean": (parts.get("sum", 0) / unit / n) if n else None,
    }


def _hists(g: Grouped, metric: str) -> list[dict[str, Any]]:
    return [
        {**dict(labels), **_hist(metric, parts)}
        for labels, parts in sorted(g.get(metric, {}).items())
    ]


def _merged_hist(g: Grouped, metric: str, unit: int = 1000) -> dict[str, Any]:
    merged: dict[str, int] = defaultdict(int)
    for parts in g.get(metric, {}).values():
        for part, value in parts.items():
            merged[part] += value
    return _hist(metric, merged, unit)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def kpis(counts: Mapping[str, int]) -> dict[str, Any]:
    """Every KPI of one window (or of all time) from its raw counts."""
    g = group(counts)
    completed, failed = _total(g, "completed"), _total(g, "failed")
    spend = _total(g, "cost_micro_usd") / MICRO_USD
    costed = _total(g, "costed_images")
    cost_rows = []
    for labels, parts in sorted(g.get("cost_micro_usd", {}).items()):
        images = g.get("costed_images", {}).get(labels, {}).get("", 0)
        spent = parts.get("", 0) / MICRO_USD
        cost_rows.append(
            {
                **dict(labels),
                "spend_usd": spent,
                "images": images,
                "cost_per_image_usd": _ratio(spent, images),
            }
        )
    scored, flagged = _total(g, "consistency_scored"), _total(g, "consistency_flagged")
    consistency_parts: dict[str, int] = defaultdict(int)
    for parts in g.get("consistency_score", {}).values():
        for part, value in parts.items():
            consistency_parts[part] += value
    bounds = BUCKETS["consistency_score"]
    users: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"requested": 0, "completed": 0, "failed": 0, "spend_usd": 0.0}
    )
    for metric, field in (
        ("user_requested", "requested"),
        ("user_completed", "completed"),
        ("user_failed", "failed"),
    ):
        for user, n in _by(g, metric, "user").items():
            users[user][field] = n
    for user, micro in _by(g, "user_cost_micro_usd", "user").items():
        users[user]["spend_usd"] = micro / MICRO_USD
    return {
        "requested": _total(g, "requested"),
        "completed": completed,
        "failed": failed,
        "failed_by_error_type": _by(g, "failed", "error_type"),
        "success_rate": _ratio(completed, completed + failed),
        "time_to_first_image": _hists(g, "time_to_first_image"),
        "time_to_first_image_all": _merged_hist(g, "time_to_first_image"),
        "image_duration": _hists(g, "image_duration"),
        "queue_wait": _hists(g, "queue_wait"),
        "spend_usd": spend,
        "cost_per_image_usd": _ratio(spend, costed),
        "cost": cost_rows,
        "consistency": {
            "scored": scored,
            "flagged": _total(g, "consistency_flagged"),
            "not_scored": _total(g, "consistency_not_scored"),
            "not_scored_by_reason": _by(g, "consistency_not_scored", "reason"),
            "flag_rate": _ratio(flagged, completed),
            "pass_rate": _ratio(completed - flagged, completed),
            "score": _hist("consistency_score", consistency_parts, 1_000_000),
            "distribution": [
                {"le": b, "count": consistency_parts.get(f"b{i}", 0)} for i, b in enumerate(bounds)
            ],
        },
        "jobs_started": _total(g, "jobs_started"),
        "jobs_ended": _total(g, "jobs_ended"),
        "users": [{"user": u, **v} for u, v in sorted(users.items())],
        "events": _by(g, "events", "kind"),
        "rejected": _by(g, "rejected", "reason"),
        "duplicates": _total(g, "duplicates"),
        "budget_alerts": _total(g, "budget_alerts"),
    }


METRICS = (*tuple(kpis({}).keys()), "concurrent_jobs")


def concurrent_jobs(jobs: Iterable[tuple[str, dict[str, Any]]], at: float) -> int:
    """Jobs requested by `at` and not ended by then (by their events' times)."""
    n = 0
    for _, job in jobs:
        start, end = job.get("requested_at"), job.get("ended_at")
        if start is not None and start <= at and (end is None or end > at):
            n += 1
    return n


def window_counts(reader: KpiReader, window: str) -> dict[float, dict[str, int]]:
    if window not in WINDOWS:
        raise UnknownName(f"unknown window {window!r}; known: {', '.join(WINDOWS)}")
    out: dict[float, dict[str, int]] = defaultdict(dict)
    for key, start, value in reader.window_items(window):
        if value:
            out[start][key] = value
    return dict(sorted(out.items()))


def series(reader: KpiReader, window: str, metric: str, last: int = 60) -> list[dict[str, Any]]:
    """One KPI per window, oldest first (the last `last` windows that hold any event)."""
    counts = window_counts(reader, window)  # names an unknown window first
    if metric not in METRICS:
        raise UnknownName(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    size = WINDOWS[window].size_s
    jobs = reader.job_items() if metric == "concurrent_jobs" else []
    rows = []
    for start, values in list(counts.items())[-last:]:
        end = start + size
        value = (
            concurrent_jobs(jobs, min(end, time.time()))
            if metric == "concurrent_jobs"
            else kpis(values)[metric]
        )
        rows.append({"start": start, "end": end, "value": value})
    return rows


@dataclass(frozen=True)
class Promise:
    name: str
    description: str
    target: str


PROMISES = (
    Promise("success_rate", "Generation success rate over the last hour", "> 95%"),
    Promise("time_to_first_image", "Time to first image, p95 over the last hour", "< 30 s"),
    Promise(
        "consistency", "Stored images not flagged as unlike their character, last hour", "> 85%"
    ),
    Promise("cost_per_image", "Cost per image, every provider, last hour", "< $0.10"),
    Promise("budget", "Spend today (UTC) against the daily budget (alert at 80%)", "< 80%"),
    Promise("throughput", "Images completed in the last hour, as demand allowed", "500/hour"),
    Promise("concurrent_jobs", "Jobs running now, within the supported concurrency", "<= 50"),
)


def _latest_hour(reader: KpiReader, now: float) -> dict[str, int]:
    """Counts of the hopping hour window that ends next (it covers the last hour)."""
    starts = HOUR.starts(now)
    latest = starts[0] if starts else None  # the window covering now that ends soonest
    for start, values in window_counts(reader, HOUR.name).items():
        if start == latest:
            return values
    return {}


def today_counts(reader: KpiReader, now: float) -> dict[str, int]:
    midnight = now - now % 86400
    out: dict[str, int] = defaultdict(int)
    for key, start, value in reader.window_items(MINUTE.name):
        if start >= midnight:
            out[key] += value
    return dict(out)


def _status(ok: bool | None) -> str:
    return "no data" if ok is None else ("pass" if ok else "fail")


def promises(
    reader: KpiReader, budget_usd: float, now: float | None = None
) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    hour = kpis(_latest_hour(reader, now))
    today = kpis(today_counts(reader, now))
    running = concurrent_jobs(reader.job_items(), now)
    rate = hour["success_rate"]
    p95 = hour["time_to_first_image_all"]["p95"]
    consistency = hour["consistency"]["pass_rate"]
    per_provider = [r["cost_per_image_usd"] for r in hour["cost"] if r["images"]]
    worst_cost = max(per_provider) if per_provider else None
    spent = today["spend_usd"]
    demand = min(hour["requested"], 500)
    checks: dict[str, tuple[Any, bool | None]] = {
        "success_rate": (rate, None if rate is None else rate > 0.95),
        "time_to_first_image": (p95, None if p95 is None else p95 < 30),
        "consistency": (consistency, None if consistency is None else consistency > 0.85),
        "cost_per_image": (worst_cost, None if worst_cost is None else worst_cost < 0.10),
        "budget": (spent, spent < 0.8 * budget_usd),
        "throughput": (
            hour["completed"],
            None if not demand else hour["completed"] + hour["failed"] >= 0.95 * demand,
        ),
        "concurrent_jobs": (running, running <= 50),
    }
    return [
        {
            "name": p.name,
            "description": p.description,
            "target": p.target,
            "value": checks[p.name][0],
            "status": _status(checks[p.name][1]),
            **(
                {"budget_usd": budget_usd, "alert": spent >= 0.8 * budget_usd}
                if p.name == "budget"
                else {}
            ),
        }
        for p in PROMISES
    ]
