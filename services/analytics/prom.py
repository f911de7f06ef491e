"""Prometheus exposition of the KPIs, read from the tables at scrape time.

Counters are the all-time totals (the totals table survives a restart, so they do not
reset); gauges are today's spend, the budget and the jobs running now. Names are the
contract the alerting rules and dashboards of deploy/k8s read.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from services.analytics.kpis import MICRO_USD
from services.analytics.queries import KpiReader, concurrent_jobs, group, today_counts
from services.analytics.windows import BUCKETS

P = "imagegen_analytics_"
_HISTOGRAMS = {
    "time_to_first_image": ("time_to_first_image_seconds", "POST to the job's first image_stored"),
    "image_duration": ("image_duration_seconds", "Generation time of one image"),
    "queue_wait": ("queue_wait_seconds", "Time an image waited on its tier's topic"),
    "consistency_score": ("consistency_score", "Consistency score of stored images (0..1)"),
}


class KpiCollector(Collector):
    def __init__(self, reader: KpiReader, budget_usd: float) -> None:
        self._reader = reader
        self._budget = budget_usd

    def collect(self) -> Iterator[Metric]:
        g = group(dict(self._reader.total_items()))
        images = CounterMetricFamily(
            P + "images",
            "Images by outcome",
            labels=["outcome", "tier", "provider", "model", "error_type"],
        )
        for outcome in ("requested", "completed", "failed"):
            for labels, parts in sorted(g.get(outcome, {}).items()):
                d = dict(labels)
                images.add_metric(
                    [
                        outcome,
                        d.get("tier", ""),
                        d.get("provider", ""),
                        d.get("model", ""),
                        d.get("error_type", ""),
                    ],
                    parts.get("", 0),
                )
        yield images
        for metric, (name, doc) in _HISTOGRAMS.items():
            unit = 1_000_000 if metric == "consistency_score" else 1000
            family = None
            for labels, parts in sorted(g.get(metric, {}).items()):
                names = [k for k, _ in labels]
                if family is None:
                    family = HistogramMetricFamily(P + name, doc, labels=names)
                bounds = BUCKETS[metric]
                cumulative, buckets = 0, []
                for i, bound in enumerate((*bounds, float("inf"))):
                    cumulative += parts.get(f"b{i}", 0)
                    buckets.append(("+Inf" if i == len(bounds) else str(bound), cumulative))
                family.add_metric(
                    [v for _, v in labels], buckets, sum_value=parts.get("sum", 0) / unit
                )
            yield family or HistogramMetricFamily(P + name, doc)
        cost = CounterMetricFamily(P + "cost_usd", "USD spent", labels=["provider", "model"])
        for labels, parts in sorted(g.get("cost_micro_usd", {}).items()):
            d = dict(labels)
            cost.add_metric([d["provider"], d["model"]], parts.get("", 0) / MICRO_USD)
        yield cost
        today = group(today_counts(self._reader, time.time()))
        spend = GaugeMetricFamily(
            P + "spend_usd_today", "USD spent since midnight UTC", labels=["provider", "model"]
        )
        for labels, parts in sorted(today.get("cost_micro_usd", {}).items()):
            d = dict(labels)
            spend.add_metric([d["provider"], d["model"]], parts.get("", 0) / MICRO_USD)
        yield spend
        yield GaugeMetricFamily(P + "budget_usd_daily", "The daily budget", value=self._budget)
        yield CounterMetricFamily(
            P + "consistency_flagged",
            "Stored images flagged as unlike their character",
            value=sum(p.get("", 0) for p in g.get("consistency_flagged", {}).values()),
        )
        yield self._counter(
            g,
            "consistency_not_scored",
            "Stored images due a consistency score that got none, by reason",
            "reason",
        )
        yield GaugeMetricFamily(
            P + "concurrent_jobs",
            "Jobs requested and not ended",
            value=concurrent_jobs(self._reader.job_items(), time.time()),
        )
        yield self._counter(g, "events", "Events counted, by type", "kind")
        yield self._counter(g, "rejected", "Records skipped", "reason", P + "events_rejected")
        yield CounterMetricFamily(
            P + "duplicates",
            "Redelivered events (same id) not counted again",
            value=sum(p.get("", 0) for p in g.get("duplicates", {}).values()),
        )

    @staticmethod
    def _counter(g: object, metric: str, doc: str, label: str, name: str = "") -> Metric:
        family = CounterMetricFamily(name or P + metric, doc, labels=[label])
        totals: dict[str, int] = defaultdict(int)
        for labels, parts in g.get(metric, {}).items():  # type: ignore[attr-defined]
            totals[dict(labels).get(label, "")] += parts.get("", 0)
        for value, n in sorted(totals.items()):
            family.add_metric([value], n)
        return family
