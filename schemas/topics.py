"""The topic registry: every topic's name, partitions and configs, declared once.

Local start-up, tests and `deploy/k8s` all read this declaration.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

DEFAULT_NAMESPACE = "imagegen"


class Tier(StrEnum):
    """Priority tiers; one jobs topic each."""

    REALTIME = "realtime"  # paid, interactive
    STANDARD = "standard"  # paid, batch
    ECONOMY = "economy"  # free


class TopicSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: str
    name: str
    partitions: int
    configs: dict[str, str]
    key: str
    description: str


_DAY_MS = 24 * 3600 * 1000
_WEEK_MS = str(7 * _DAY_MS)
EVENTS_RETENTION_DAYS = 30
"""How long the events topic keeps records: analysts re-read and recount from it (a month of
KPIs), so it outlives the other topics' week. `registry(events_retention_days=...)` sets
another; the Strimzi manifests carry the default."""
_CONFIGS = {"retention.ms": _WEEK_MS, "max.message.bytes": "1048576"}


# Compacted as well as aged out: a key's latest record is all a reader needs (a cancel).
_COMPACTED = {"cleanup.policy": "compact,delete"}


def _spec(
    namespace: str,
    role: str,
    partitions: int,
    key: str,
    description: str,
    extra: dict[str, str] | None = None,
) -> TopicSpec:
    return TopicSpec(
        role=role,
        name=f"{namespace}.{role}.v1",
        partitions=partitions,
        configs={**_CONFIGS, **(extra or {})},
        key=key,
        description=description,
    )


class TopicNames:
    """Resolved topic names for one namespace (tests use a fresh namespace each)."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.namespace = namespace
        self.requests = f"{namespace}.requests.v1"
        self.images_raw = f"{namespace}.images.raw.v1"
        self.images_processed = f"{namespace}.images.processed.v1"
        self.events = f"{namespace}.events.v1"
        self.control = f"{namespace}.control.v1"
        self.dead_letter = f"{namespace}.deadletter.v1"

    def jobs(self, tier: Tier) -> str:
        return f"{self.namespace}.jobs.{tier.value}.v1"

    def all_jobs(self) -> list[str]:
        return [self.jobs(t) for t in Tier]


def registry(
    namespace: str = DEFAULT_NAMESPACE, events_retention_days: int = EVENTS_RETENTION_DAYS
) -> list[TopicSpec]:
    """Every topic of the system, in one list."""
    if events_retention_days < 1:
        raise ValueError(f"events_retention_days={events_retention_days}: must be at least 1")
    events_retention = {"retention.ms": str(events_retention_days * _DAY_MS)}
    specs = [
        _spec(namespace, "requests", 8, "user id", "Commands from the gateway."),
        *(
            _spec(namespace, f"jobs.{t.value}", 8, "job id", f"Per-image jobs, {t.value} tier.")
            for t in Tier
        ),
        _spec(namespace, "images.raw", 8, "job id", "Generated images (claim-check)."),
        _spec(namespace, "images.processed", 8, "job id", "Renditions (claim-check)."),
        _spec(namespace, "events", 8, "job id", "Everything clients and analysts see.").model_copy(
            update={"configs": {**_CONFIGS, **events_retention}}
        ),
        _spec(
            namespace,
            "control",
            4,
            "job id",
            "Job control for the workers: a copy of each job_cancelled, so that generators"
            " stop a cancelled job's images without reading every event.",
            _COMPACTED,
        ),
        _spec(namespace, "deadletter", 4, "original key", "Messages that could not be handled."),
    ]
    return specs
