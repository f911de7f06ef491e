"""Operators' alerts, defined once: the PrometheusRule, the Grafana dashboard and the
ServiceMonitors in deploy/k8s/monitoring are generated from these definitions
(imagegen/k8s_monitoring.py, `imagegen k8s generate`), and `promtool test rules` checks
each alert, firing and not, against synthetic series (tests/contract/test_alerts.py).

What the alerts read:
- the analytics service's KPIs (`imagegen_analytics_*`, services/analytics): spend against
  the daily budget, images by outcome, time to first image;
- every service's `imagegen_dead_letters_total` (imagegen/kafka/worker.py);
- consumer lag per tier from Strimzi's Kafka Exporter (`kafka_consumergroup_lag`; enable
  `spec.kafkaExporter` on the Kafka resource): KEDA caps the lag it reports at
  lagThreshold x partitions, so only the exporter sees a backlog beyond what it can absorb;
- Prometheus's own `up` per scraped pod, with the job relabelled `imagegen-<service>` and
  the pod's readiness copied into a `ready` label by the ServiceMonitors
  (imagegen/k8s_monitoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from imagegen.k8s_generators import GENERATOR_GROUP, TIER_SCALING, tier_partitions
from schemas.topics import DEFAULT_NAMESPACE, Tier, TopicNames

RULE_GROUP = "imagegen"

# Every service and where Prometheus scrapes it: (Service selected, its port name). The
# workers share the headless imagegen-workers-metrics Service (base/metrics-service.yaml);
# each ServiceMonitor keeps only its own pods of it.
SERVICES: dict[str, tuple[str, str]] = {
    "gateway": ("gateway", "http"),
    "scheduler": ("workers-metrics", "metrics"),
    "generator": ("workers-metrics", "metrics"),
    "postprocess": ("workers-metrics", "metrics"),
    "storage": ("workers-metrics", "metrics"),
    "analytics": ("analytics", "http"),
}

# The product's promises (the epic's success criteria, the module spec's budget alert).
SUCCESS_RATE_MIN = 0.95
TIME_TO_FIRST_IMAGE_P95_MAX_S = 30.0
BUDGET_WARN_FRACTION = 0.8

Comparison = Literal[">", ">=", "<", "=="]
Severity = Literal["warning", "critical"]


def job(service: str) -> str:
    """The `job` label of a service's targets (set by its ServiceMonitor)."""
    return f"imagegen-{service}"


@dataclass(frozen=True)
class Alert:
    """One alerting rule: `series` compared with `threshold` (the dashboard graphs
    `series` with the threshold drawn on it)."""

    name: str
    series: str
    comparison: Comparison
    threshold: float
    for_: str
    severity: Severity
    summary: str
    description: str
    unit: str = "short"
    """Grafana unit of the series (percentunit, s, currencyUSD, short)."""
    legend: str = ""
    or_else: str = ""
    """A PromQL expression that also fires the alert (`absent(...)` for a missing service)."""

    @property
    def expr(self) -> str:
        expr = f"{self.series} {self.comparison} {number(self.threshold)}"
        return f"{expr} or {self.or_else}" if self.or_else else expr

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "team": "imagegen"},
            "annotations": {"summary": self.summary, "description": self.description},
        }


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


_SPEND_FRACTION = (
    "sum(imagegen_analytics_spend_usd_today) / scalar(max(imagegen_analytics_budget_usd_daily))"
)
_IMAGES_15M = 'sum(increase(imagegen_analytics_images_total{{outcome=~"{outcome}"}}[15m]))'
# `or vector(0)`: with no image stored at all the rate is 0, not an empty result. With none
# finished (the denominator empty or 0) there is no rate and no alert.
_SUCCESS_RATE = (
    f"({_IMAGES_15M.format(outcome='completed')} or vector(0))"
    f" / {_IMAGES_15M.format(outcome='completed|failed')}"
)
_TTFI_P95 = (
    "histogram_quantile(0.95, sum by (le, tier) ("
    "rate(imagegen_analytics_time_to_first_image_seconds_bucket[15m])))"
)


def lag_ceiling(tier: Tier, namespace: str = DEFAULT_NAMESPACE) -> int:
    """The most lag a tier's KEDA ScaledObject can work off: lagThreshold x max replicas
    (max replicas = the tier topic's partitions, imagegen/k8s_generators.py)."""
    return TIER_SCALING[tier].lag_threshold * tier_partitions(namespace)[tier]


def _lag_alert(tier: Tier, namespace: str) -> Alert:
    topic = TopicNames(namespace).jobs(tier)
    scaling = TIER_SCALING[tier]
    partitions = tier_partitions(namespace)[tier]
    return Alert(
        name=f"ImagegenLag{tier.value.capitalize()}BeyondKeda",
        series=(
            f'sum by (topic) (kafka_consumergroup_lag{{consumergroup="{namespace}.'
            f'{GENERATOR_GROUP}", topic="{topic}"}})'
        ),
        comparison=">",
        threshold=lag_ceiling(tier, namespace),
        for_="10m",
        severity="warning" if tier is Tier.ECONOMY else "critical",
        summary=f"The {tier.value} tier's backlog is more than its generators can absorb",
        description=(
            f"{{{{ $value }}}} images wait on {topic}: KEDA scales the {tier.value} generators"
            f" to at most {partitions} pods (its partitions) at {scaling.lag_threshold}"
            f" queued images each ({lag_ceiling(tier, namespace)}). Add partitions and"
            " GPUs, or find what slows generation (provider latency, a failing model)."
        ),
        legend="{{topic}}",
    )


def _service_down(service: str) -> Alert:
    # `ready` is the pod's readiness as Kubernetes judges it (its /readyz probe), copied
    # onto each target by the ServiceMonitor: a pod that answers /metrics but fails its
    # probe (broker or database unreachable, models loading) is up but not ready.
    selector = f'{{job="{job(service)}", ready="true"}}'
    return Alert(
        name=f"Imagegen{service.capitalize()}NotReady",
        series=f"max(up{selector})",
        comparison="<",
        threshold=1,
        for_="5m",
        severity="critical",
        summary=f"No {service} instance is ready",
        description=(
            f"No {service} pod is both ready (its readiness probe, /readyz) and scraped"
            f" (up): the {service} cannot do its work. `kubectl describe pod` shows the"
            " failing probe; /readyz names the check that fails."
        ),
        legend=service,
        or_else=f"absent(up{selector})",
    )


def _budget_alert(name: str, fraction: float, severity: Severity, summary: str, then: str) -> Alert:
    return Alert(
        name=name,
        series=_SPEND_FRACTION,
        comparison=">=",
        threshold=fraction,
        for_="0m",
        severity=severity,
        summary=summary,
        description=f"{{{{ $value | humanizePercentage }}}} of the daily budget is spent: {then}",
        unit="percentunit",
        legend="spent / budget",
    )


def alerts(namespace: str = DEFAULT_NAMESPACE) -> list[Alert]:
    """Every alert, in the order the rule group and the dashboard list them."""
    return [
        _budget_alert(
            "ImagegenBudget80Percent",
            BUDGET_WARN_FRACTION,
            "warning",
            "Today's spend passed 80% of the daily budget",
            "at 100% the scheduler refuses new work until midnight UTC.",
        ),
        _budget_alert(
            "ImagegenBudgetExhausted",
            1,
            "critical",
            "Today's budget is spent",
            "new jobs are refused (budget_exceeded) until midnight UTC.",
        ),
        Alert(
            name="ImagegenSuccessRateLow",
            series=_SUCCESS_RATE,
            comparison="<",
            threshold=SUCCESS_RATE_MIN,
            for_="5m",
            severity="critical",
            summary="Fewer than 95% of images succeed (15 minutes)",
            description=(
                "{{ $value | humanizePercentage }} of the images finished in the last 15"
                " minutes were stored (promise: > 95%). See failures by error_type on the"
                " dashboard."
            ),
            unit="percentunit",
            legend="success rate",
        ),
        Alert(
            name="ImagegenTimeToFirstImageSlow",
            series=_TTFI_P95,
            comparison=">",
            threshold=TIME_TO_FIRST_IMAGE_P95_MAX_S,
            for_="10m",
            severity="warning",
            summary="Time to first image p95 is above 30 s ({{ $labels.tier }})",
            description=(
                "p95 from request to a job's first stored image is {{ $value | humanize }}s on"
                " the {{ $labels.tier }} tier (promise: < 30 s)."
            ),
            unit="s",
            legend="{{tier}}",
        ),
        Alert(
            name="ImagegenDeadLettersGrowing",
            series="sum by (job, topic) (increase(imagegen_dead_letters_total[15m]))",
            comparison=">",
            threshold=0,
            for_="0m",
            severity="warning",
            summary="{{ $labels.job }} dead-lettered messages from {{ $labels.topic }}",
            description=(
                "{{ $value | humanize }} messages went to the dead-letter topic in 15 minutes."
                " Inspect them with `imagegen dlq list`; re-drive with `imagegen dlq redrive`."
            ),
            legend="{{job}} {{topic}}",
        ),
        *(_lag_alert(tier, namespace) for tier in Tier),
        *(_service_down(service) for service in SERVICES),
    ]


def rule_groups(namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """The rules as a Prometheus rule file (what `promtool` reads)."""
    return {"groups": [{"name": RULE_GROUP, "rules": [a.rule() for a in alerts(namespace)]}]}
