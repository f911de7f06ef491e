"""The project's metric instruments, one place for every name (OpenTelemetry metrics API).

Code records through `instruments()`; until a service installs a MeterProvider
(`imagegen.telemetry`), the API's no-op provider makes every call free. Names follow
Prometheus conventions (`_total` counters, `_seconds` histograms) so the scrape output
reads naturally.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from opentelemetry import metrics
from opentelemetry.metrics import Counter, Histogram, UpDownCounter

METER_NAME = "imagegen"


@dataclass(frozen=True)
class Instruments:
    requests: Counter
    """HTTP requests served by the gateway (route, method, status)."""
    jobs: Counter
    """Jobs by status (queued, completed, partially_completed, failed, cancelled) and the
    user's tier (free, paid)."""
    images: Counter
    """Images by outcome (completed, failed) and provider."""
    queue_wait: Histogram
    """Seconds a message waited on its topic, enqueue to consume (topic; tier for jobs)."""
    generation_seconds: Histogram
    """Seconds a backend spent generating one image (provider, model)."""
    cost: Counter
    """USD charged per image (provider, model)."""
    budget_consumed: Counter
    """USD of actual cost booked against the budgets, at settlement (provider)."""
    consistency_score: Histogram
    """Face distance of each scored image to its character (lower is closer)."""
    consistency_unscored: Counter
    """Images that were due a consistency score and got none (reason: no face, ...)."""
    sse_connections: UpDownCounter
    """Open Server-Sent-Events streams on this gateway."""
    provider_unavailable: Counter
    """Times a provider was taken out of rotation for a cool-down (provider)."""
    webhook_deliveries: Counter
    """Webhook delivery attempts (outcome: delivered, failed, refused)."""
    dead_letters: Counter
    """Messages a consumer gave up on and sent to the dead-letter topic (topic: the
    original, error_type); the `ImagegenDeadLettersGrowing` alert watches it."""


@cache
def instruments() -> Instruments:
    """The instruments of this process (created once, on first use)."""
    meter = metrics.get_meter(METER_NAME)
    return Instruments(
        requests=meter.create_counter("imagegen_http_requests", unit="1"),
        jobs=meter.create_counter("imagegen_jobs", unit="1"),
        images=meter.create_counter("imagegen_images", unit="1"),
        queue_wait=meter.create_histogram("imagegen_queue_wait_seconds", unit="s"),
        generation_seconds=meter.create_histogram("imagegen_generation_seconds", unit="s"),
        cost=meter.create_counter("imagegen_cost_usd", unit="usd"),
        budget_consumed=meter.create_counter("imagegen_budget_consumed_usd", unit="usd"),
        consistency_score=meter.create_histogram("imagegen_consistency_distance", unit="1"),
        consistency_unscored=meter.create_counter("imagegen_consistency_unscored", unit="1"),
        sse_connections=meter.create_up_down_counter("imagegen_sse_connections", unit="1"),
        provider_unavailable=meter.create_counter("imagegen_provider_cooldowns", unit="1"),
        webhook_deliveries=meter.create_counter("imagegen_webhook_deliveries", unit="1"),
        dead_letters=meter.create_counter("imagegen_dead_letters", unit="1"),
    )
